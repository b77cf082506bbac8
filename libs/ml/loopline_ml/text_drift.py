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


def _mmd2(k: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of each column's split of the pooled sample (1: the first set, 0: the second).

    Every split's within- and between-set sums come from one matrix product ``K @ members``, so a
    permutation costs O(N) after it instead of re-indexing the N x N kernel matrix.
    """
    n = members[:, 0].sum()
    m = k.shape[0] - n
    diag, row = np.diag(k), k.sum(axis=1)
    total = row.sum()
    sxx = np.einsum("ij,ij->j", members, k @ members)
    sx = row @ members
    sxy = sx - sxx
    syy = total - 2.0 * sx + sxx
    dx = diag @ members
    dy = diag.sum() - dx
    out: np.ndarray = (sxx - dx) / (n * (n - 1)) + (syy - dy) / (m * (m - 1)) - 2.0 * sxy / (n * m)
    return out


def mmd_test(ref: np.ndarray, cur: np.ndarray, *, permutations: int = 200, seed: int = 0) -> tuple[float, float, float]:
    """(MMD², p-value, bandwidth). The kernel matrix is computed once; the permutations are relabellings of it."""
    if ref.shape[0] < 2 or cur.shape[0] < 2:
        raise ValueError("MMD needs at least two rows on each side")
    pooled = np.vstack([ref, cur]).astype(np.float64)
    d = _sq_dists(pooled)
    bw = median_bandwidth(d)
    k = np.exp(-d / (2.0 * bw * bw))
    size, n = k.shape[0], ref.shape[0]
    first = np.zeros((size, 1))
    first[:n] = 1.0
    observed = float(_mmd2(k, first)[0])
    rng = np.random.default_rng(seed)
    members = np.zeros((size, permutations))
    for j in range(permutations):
        members[rng.permutation(size)[:n], j] = 1.0
    reached = int(np.sum(_mmd2(k, members) >= observed - 1e-12)) if permutations else 0
    return observed, (reached + 1) / (permutations + 1), bw


def text_drift(ref: np.ndarray, cur: np.ndarray, *, permutations: int = 200, seed: int = 0) -> TextDrift:
    """Both statistics of one window against the reference (rows are embeddings)."""
    mmd2, p, bw = mmd_test(ref, cur, permutations=permutations, seed=seed)
    return TextDrift(centroid_distance(ref, cur), mmd2, p, bw, permutations)
