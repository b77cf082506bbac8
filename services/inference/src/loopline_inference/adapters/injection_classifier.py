"""An optional prompt-injection classifier: char n-gram TF-IDF and logistic regression, trained at start.

It catches paraphrases the rules in ``domain/guardrails.py`` miss, but it learns from a hundred shipped
examples (``data/injection_examples.txt``), so it is off unless ``use_classifier`` is set. Training takes
a few tens of milliseconds; it reads the same normalised text the rules read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline

from loopline_inference.domain.guardrails import normalize

EXAMPLES = Path(__file__).parent / "data" / "injection_examples.txt"


def read_examples(path: Path = EXAMPLES) -> tuple[list[str], list[int]]:
    """``label<TAB>text`` lines, ``#`` comments and blank lines skipped."""
    texts: list[str] = []
    labels: list[int] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        label, _, text = line.partition("\t")
        if label not in {"0", "1"} or not text:
            raise ValueError(f"{path}: bad example line {line[:40]!r}")
        labels.append(int(label))
        texts.append(text)
    return texts, labels


class InjectionClassifier:
    """``probability(text)``: how likely the prompt is an injection, in [0, 1]."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int]) -> None:
        # char_wb n-grams survive small rewordings and typos; balanced weights keep the two classes even.
        self._model: Pipeline = make_pipeline(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True),
            LogisticRegression(C=10.0, class_weight="balanced", max_iter=1000),
        )
        self._model.fit([normalize(text) for text in texts], list(labels))

    @classmethod
    def from_file(cls, path: Path = EXAMPLES) -> InjectionClassifier:
        return cls(*read_examples(path))

    def probability(self, text: str) -> float:
        return float(self._model.predict_proba([normalize(text)])[0][1])
