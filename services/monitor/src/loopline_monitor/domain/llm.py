"""What one window of an LLM version's generations says: text drift, refusals, response length,
guardrail hits, latency per token; and a model's rolling spend against its budget. Pure.

A version's reference is its first ``reference`` generations in the monitor's store order (their
input embeddings and response lengths are stored with them, so a restart rebuilds the very same
reference and never re-embeds); its windows are count windows over the generations after those.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from loopline_ml.text_drift import text_drift
from scipy import stats

from loopline_monitor.domain.evaluation import Finding, rate
from loopline_monitor.domain.windows import Spec


@dataclass(frozen=True, slots=True)
class GenRow:
    seq: int
    at: float
    embedding: np.ndarray
    completion_tokens: int
    latency_ms: float
    refused: bool
    guarded: bool
    """At least one guardrail fired on it."""
    answered: bool
    """Outcome "ok" with completion tokens: what its length and latency per token mean something for."""


@dataclass(frozen=True)
class LlmLimits:
    alpha: float = 0.01
    """Text drift when the MMD permutation p-value is below this."""
    permutations: int = 200
    critical_distance: float = 0.1
    """A drifted window whose centroid cosine distance reaches this is critical."""
    length_alpha: float = 0.01
    """Response length drift when the KS p-value against the reference's lengths is below this."""
    refusal: tuple[float, float] = (0.1, 0.3)
    guardrail: tuple[float, float] = (0.2, 0.5)
    latency_per_token_ms: tuple[float, float] = (100.0, 500.0)


class TextWindow:
    """The last ``size`` generations, due every ``step`` (count windows only: text has no event-time use here)."""

    def __init__(self, spec: Spec) -> None:
        if spec.by != "count":
            raise ValueError(f"text windows are count windows, not {spec}")
        self.spec = spec
        self.rows: deque[GenRow] = deque(maxlen=int(spec.size))
        self.since = 0
        self.evaluated_seq = 0

    def add(self, row: GenRow) -> bool:
        self.rows.append(row)
        self.since += 1
        return self.since >= self.spec.step and len(self.rows) >= self.spec.size

    def evaluated(self) -> None:
        self.since = 0
        if self.rows:
            self.evaluated_seq = self.rows[-1].seq

    def restore(self, rows: list[GenRow], evaluated_seq: int) -> None:
        self.evaluated_seq = evaluated_seq
        self.rows.extend(rows)
        self.since = sum(1 for r in self.rows if r.seq > evaluated_seq)


def evaluate_text_window(ref: list[GenRow], rows: list[GenRow], limits: LlmLimits,
                         seed: int) -> tuple[list[Finding], dict[str, float]]:
    """Findings (kinds text_drift, response_length, refusal_rate, guardrail_rate, latency_per_token) and
    the window's figures. ``seed`` fixes the permutations, so one window always gets the same p-value."""
    td = text_drift(np.vstack([r.embedding for r in ref]), np.vstack([r.embedding for r in rows]),
                    permutations=limits.permutations, seed=seed)
    drifted = td.p_value < limits.alpha
    severity = ("critical" if td.centroid_distance >= limits.critical_distance else "warning") if drifted else ""
    findings = [Finding("text_drift", drifted, severity, "mmd_p_value", td.p_value, limits.alpha,
                        f"inputs drifted: MMD² {td.mmd2:.4g}, p {td.p_value:.3g} < {limits.alpha:g}, centroid "
                        f"distance {td.centroid_distance:.3g}" if drifted else
                        f"inputs as the reference: p {td.p_value:.3g}")]
    n = len(rows)
    refusal = sum(r.refused for r in rows) / n
    guarded = sum(r.guarded for r in rows) / n
    findings.append(rate("refusal_rate", "refusal_rate", refusal, limits.refusal, "refusal rate"))
    findings.append(rate("guardrail_rate", "guardrail_rate", guarded, limits.guardrail, "guardrail hit rate"))
    figures = {"mmd2": td.mmd2, "mmd_p_value": td.p_value, "centroid_distance": td.centroid_distance,
               "bandwidth": td.bandwidth, "refusal_rate": refusal, "guardrail_rate": guarded, "size": float(n)}
    lengths = [r.completion_tokens for r in rows if r.answered]
    ref_lengths = [r.completion_tokens for r in ref if r.answered]
    if len(lengths) >= 2 and len(ref_lengths) >= 2:
        ks = stats.ks_2samp(ref_lengths, lengths)
        stat, p = float(ks.statistic), float(ks.pvalue)
        moved = p < limits.length_alpha
        findings.append(Finding("response_length", moved, "warning" if moved else "", "ks_p_value", p,
                                limits.length_alpha, f"response lengths moved: KS {stat:.3g}, p {p:.3g} "
                                f"(mean {np.mean(lengths):.1f} vs {np.mean(ref_lengths):.1f} tokens)" if moved
                                else f"response lengths as the reference: p {p:.3g}"))
        per_token = [r.latency_ms / r.completion_tokens for r in rows if r.answered]
        p95 = float(np.percentile(per_token, 95))
        findings.append(rate("latency_per_token", "latency_per_token_p95_ms", p95, limits.latency_per_token_ms,
                             "p95 latency per completion token (ms)"))
        figures |= {"length_ks": stat, "length_p_value": p, "mean_completion_tokens": float(np.mean(lengths)),
                    "latency_per_token_p95_ms": p95}
    return findings, figures


@dataclass(frozen=True)
class Budget:
    window_s: float
    limit: float
    currency: str = "USD"


class Spend:
    """A model's rolling spend: (event time, cost) of its generations within the budget's window."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.items: deque[tuple[float, float]] = deque()
        self.total = 0.0

    def add(self, at: float, cost: float) -> None:
        self.items.append((at, cost))
        self.total += cost

    def at(self, now: float) -> float:
        """The spend within the window ending ``now`` (older costs are dropped)."""
        while self.items and self.items[0][0] < now - self.budget.window_s:
            self.total -= self.items.popleft()[1]
        self.total = max(0.0, self.total) if self.items else 0.0
        return self.total


def budget_finding(spend: float, budget: Budget, warning_share: float) -> Finding:
    """Warning at ``warning_share`` of the limit, critical at the limit."""
    share = spend / budget.limit if budget.limit > 0 else 0.0
    f = rate("budget", "spend_share", share, (warning_share, 1.0), "share of the budget spent")
    return Finding(f.kind, f.crossed, f.severity, f.metric, f.value, f.threshold,
                   f"spent {spend:.4g} {budget.currency} of {budget.limit:g} in the last {budget.window_s:g}s "
                   f"({share:.0%})")
