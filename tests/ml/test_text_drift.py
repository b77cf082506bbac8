"""Text drift statistics (pure): centroid cosine distance and MMD² with a seeded permutation p-value."""

from __future__ import annotations

import numpy as np
import pytest
from loopline_ml.text_drift import centroid_distance, median_bandwidth, mmd_test, text_drift


def _cloud(rng: np.random.Generator, n: int, shift: float = 0.0, dim: int = 16) -> np.ndarray:
    x = rng.normal(size=(n, dim))
    x[:, 1] += 3.0  # a direction all texts share, as sentence embeddings of one language do
    x[:, 0] += shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)  # unit rows, as sentence embeddings are


def test_same_distribution_gives_p_values_that_are_not_small() -> None:
    rng = np.random.default_rng(1)
    ps = [mmd_test(_cloud(rng, 120), _cloud(rng, 80), permutations=100, seed=i)[1] for i in range(20)]
    # under the null the p-value is about uniform: its mean near 0.5, few below 0.05
    assert 0.3 < float(np.mean(ps)) < 0.7, ps
    assert sum(p < 0.05 for p in ps) <= 3, ps


def test_shifted_distribution_gives_a_small_p_value_and_a_larger_distance() -> None:
    rng = np.random.default_rng(2)
    ref = _cloud(rng, 150)
    same = text_drift(ref, _cloud(rng, 100), permutations=200, seed=0)
    moved = text_drift(ref, _cloud(rng, 100, shift=1.5), permutations=200, seed=0)
    assert moved.p_value == pytest.approx(1 / 201), "no permutation reaches a real shift's MMD²"
    assert moved.mmd2 > 5 * max(same.mmd2, 1e-6)
    assert moved.centroid_distance > 5 * same.centroid_distance
    assert same.p_value > 0.05


def test_deterministic_with_a_seed() -> None:
    rng = np.random.default_rng(3)
    ref, cur = _cloud(rng, 60), _cloud(rng, 50, shift=0.2)
    assert mmd_test(ref, cur, seed=7) == mmd_test(ref, cur, seed=7)
    assert text_drift(ref, cur, seed=7) == text_drift(ref, cur, seed=7)


def test_centroid_distance_and_bandwidth_edges() -> None:
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert centroid_distance(x, x) == pytest.approx(0.0)
    assert centroid_distance(x, y) == pytest.approx(1.0)
    assert median_bandwidth(np.zeros((3, 3))) == 1.0, "all rows equal: a bandwidth that does not divide by 0"
    with pytest.raises(ValueError, match="two rows"):
        mmd_test(x[:1], y)


def test_unbiased_mmd2_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.5
    mmd2, _, bw = mmd_test(a, b, permutations=1)

    def k(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.exp(-np.sum((u - v) ** 2) / (2 * bw * bw)))

    xx = sum(k(a[i], a[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(a[i], b[j]) for i in range(7) for j in range(5)) / 35
    assert mmd2 == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
