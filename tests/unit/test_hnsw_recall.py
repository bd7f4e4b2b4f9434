"""HNSW quality against the exact index on 20,000 clustered 128-d vectors.

Default ``IndexParams`` (m=16, ef_construction=200, ef_search=64). The data are 50 gaussian
clusters; queries are fresh draws from the same clusters. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from arrwdb.adapters.index import ExactIndex, HnswIndex
from arrwdb.domain.models import IndexParams, Matrix, Metric
from arrwdb.domain.ports import Labels

pytestmark = pytest.mark.slow

N, DIM, CLUSTERS, N_QUERIES, K = 20_000, 128, 50, 200, 10
FAR_CLUSTERS = 8  # ~16% of the vectors: past the brute-force threshold


Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Setup:
    metric: Metric
    hnsw: HnswIndex
    exact: ExactIndex
    queries: Matrix
    clusters: Ints  # of each stored vector


def clustered(
    rng: np.random.Generator, centres: Matrix, n: int, first: int = 0
) -> tuple[Matrix, Ints]:
    """``n`` points around ``centres[first:]``, and the cluster of each."""
    which = rng.integers(first, len(centres), n)
    points = centres[which] + 0.6 * rng.normal(size=(n, centres.shape[1]))
    return points.astype(np.float32), which


@pytest.fixture(scope="module", params=["cosine", "l2"])
def setup(request: pytest.FixtureRequest) -> Setup:
    metric: Metric = request.param
    rng = np.random.default_rng(20240601)
    centres = rng.normal(size=(CLUSTERS, DIM)).astype(np.float32)
    x, clusters = clustered(rng, centres, N)
    # Queries avoid the first FAR_CLUSTERS clusters (see the last test).
    queries, _ = clustered(rng, centres, N_QUERIES, first=FAR_CLUSTERS)
    labels = np.arange(N, dtype=np.int64)
    started = time.perf_counter()
    hnsw = HnswIndex(DIM, metric, IndexParams())
    hnsw.add(labels, x)
    print(f"\n[{metric}] built HNSW of {N} in {time.perf_counter() - started:.1f} s")
    exact = ExactIndex(DIM, metric)
    exact.add(labels, x)
    return Setup(metric, hnsw, exact, queries, clusters)


def recall(found: Labels, truth: Labels) -> float:
    pairs = zip(found, truth, strict=True)
    return sum(len(set(f.tolist()) & set(t.tolist())) for f, t in pairs) / truth.size


def test_recall_at_10(setup: Setup) -> None:
    started = time.perf_counter()
    found, _ = setup.hnsw.search(setup.queries, K)
    took = time.perf_counter() - started
    truth, _ = setup.exact.search(setup.queries, K)
    r = recall(found, truth)
    print(f"[{setup.metric}] recall@{K} = {r:.4f} ({N_QUERIES} queries in {took * 1e3:.0f} ms)")
    assert r >= 0.95


def test_a_very_selective_filter_is_exact(setup: Setup) -> None:
    rng = np.random.default_rng(1)
    allowed = np.sort(rng.choice(N, size=N // 200, replace=False)).astype(np.int64)  # 0.5%
    found, scores = setup.hnsw.search(setup.queries, K, allowed=allowed)
    truth, truth_scores = setup.exact.search(setup.queries, K, allowed=allowed)
    assert (found == truth).all()
    np.testing.assert_allclose(scores, truth_scores, rtol=1e-5, atol=1e-5)


def test_a_filtered_graph_search_keeps_its_recall(setup: Setup) -> None:
    """20% allowed, at random: past the brute-force threshold, so the graph is filtered."""
    rng = np.random.default_rng(2)
    allowed = np.sort(rng.choice(N, size=N // 5, replace=False)).astype(np.int64)
    found, _ = setup.hnsw.search(setup.queries, K, allowed=allowed)
    assert set(found.ravel().tolist()) <= set(allowed.tolist())
    truth, _ = setup.exact.search(setup.queries, K, allowed=allowed)
    r = recall(found, truth)
    print(f"[{setup.metric}] filtered (20% random) recall@{K} = {r:.4f}")
    assert r >= 0.95


def test_a_filter_far_from_the_query_still_finds_good_neighbours(setup: Setup) -> None:
    """Only clusters the queries do not come from are allowed: the hard case for a filtered
    graph search (the allowed nodes are far from where the search starts)."""
    allowed = np.flatnonzero(setup.clusters < FAR_CLUSTERS).astype(np.int64)
    found, _ = setup.hnsw.search(setup.queries, K, allowed=allowed)
    assert set(found.ravel().tolist()) <= set(allowed.tolist())
    truth, _ = setup.exact.search(setup.queries, K, allowed=allowed)
    r = recall(found, truth)
    print(f"[{setup.metric}] filtered ({len(allowed)} far labels) recall@{K} = {r:.4f}")
    assert r >= 0.9


def test_allowed_labels_kept_between_searches_are_only_read_only_ones(setup: Setup) -> None:
    """The index keeps a read-only allowed array's search forms for the next searches; a
    writeable one may change under the same id, so it is read afresh every time."""
    rng = np.random.default_rng(3)
    half = np.sort(rng.choice(N, size=N // 2, replace=False)).astype(np.int64)
    kept = half.copy()
    kept.flags.writeable = False
    for _ in range(2):  # the second search uses the kept forms
        found, _ = setup.hnsw.search(setup.queries, K, allowed=kept)
        assert set(found.ravel().tolist()) <= set(half.tolist())
    truth, _ = setup.exact.search(setup.queries, K, allowed=half)
    assert recall(found, truth) >= 0.95
    editable = half.copy()
    setup.hnsw.search(setup.queries, K, allowed=editable)
    other = np.setdiff1d(np.arange(N, dtype=np.int64), half)  # the other half
    editable[:] = other  # the same array object, other labels
    found, _ = setup.hnsw.search(setup.queries, K, allowed=editable)
    assert set(found.ravel().tolist()) <= set(other.tolist())
