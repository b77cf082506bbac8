"""Drift between two sets of text embeddings: centroid cosine distance and MMD² with a permutation p-value.

Pure numpy. Embeddings are rows (one text each); the monitor compares a model version's reference
inputs with each window of newer ones. MMD² uses an RBF kernel whose bandwidth is the median
pairwise distance of the pooled sample (the median heuristic, as Gretton et al. and alibi-detect do),
and its p-value is the share of seeded random relabellings of the pooled sample whose MMD² reaches
the observed one (with the +1 correction, so it is never 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TextDrift:
    centroid_distance: float
    """1 - cosine similarity of the two sets' mean embeddings."""
    mmd2: float
    """Unbiased MMD² of the window against the reference."""
    p_value: float
    bandwidth: float
    permutations: int


def centroid_distance(ref: np.ndarray, cur: np.ndarray) -> float:
    """1 - cos(mean(ref), mean(cur)); 0 for the same direction."""
    a, b = ref.mean(axis=0), cur.mean(axis=0)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(1.0 - np.dot(a, b) / (na * nb))


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    out: np.ndarray = np.maximum(d, 0.0)
    return out


def median_bandwidth(sq_dists: np.ndarray) -> float:
    """The median of the off-diagonal pairwise distances (1 when they are all 0)."""
    n = sq_dists.shape[0]
    off = sq_dists[~np.eye(n, dtype=bool)]
    med = float(np.sqrt(np.median(off))) if off.size else 0.0
    return med if med > 0 else 1.0


def _mmd2(k: np.ndarray, n: int) -> float:
    """Unbiased MMD² of the first ``n`` rows of the pooled kernel matrix against the rest."""
    m = k.shape[0] - n
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    sxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mmd_test(ref: np.ndarray, cur: np.ndarray, *, permutations: int = 200, seed: int = 0) -> tuple[float, float, float]:
    """(MMD², p-value, bandwidth). The kernel matrix is computed once; each permutation re-indexes it."""
    if ref.shape[0] < 2 or cur.shape[0] < 2:
        raise ValueError("MMD needs at least two rows on each side")
    pooled = np.vstack([ref, cur]).astype(np.float64)
    d = _sq_dists(pooled)
    bw = median_bandwidth(d)
    k = np.exp(-d / (2.0 * bw * bw))
    n = ref.shape[0]
    observed = _mmd2(k, n)
    rng = np.random.default_rng(seed)
    reached = 0
    for _ in range(permutations):
        idx = rng.permutation(k.shape[0])
        if _mmd2(k[np.ix_(idx, idx)], n) >= observed:
            reached += 1
    return observed, (reached + 1) / (permutations + 1), bw


def text_drift(ref: np.ndarray, cur: np.ndarray, *, permutations: int = 200, seed: int = 0) -> TextDrift:
    """Both statistics of one window against the reference (rows are embeddings)."""
    mmd2, p, bw = mmd_test(ref, cur, permutations=permutations, seed=seed)
    return TextDrift(centroid_distance(ref, cur), mmd2, p, bw, permutations)
