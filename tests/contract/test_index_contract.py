"""The ``VectorIndex`` contract, run against every index kind and every metric.

Expectations are computed by a float64 numpy oracle. The flat index must match it exactly; the
HNSW index must match it exactly wherever its promise is exact (filters with few allowed
labels) and reach a high recall elsewhere.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest

from arrwdb.adapters.index import make_index
from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.models import INDEX_KINDS, METRICS, IndexParams, Matrix, Metric
from arrwdb.domain.ports import Labels, Scores, VectorIndex

DIM = 16
MIN_RECALL = {"flat": 1.0, "hnsw": 0.9}

F64 = npt.NDArray[np.float64]
Spec = tuple[str, Metric]


@pytest.fixture(
    params=[(kind, metric) for kind in INDEX_KINDS for metric in METRICS],
    ids=lambda spec: f"{spec[0]}-{spec[1]}",
)
def spec(request: pytest.FixtureRequest) -> Spec:
    kind, metric = request.param
    return kind, metric


@pytest.fixture
def index(spec: Spec) -> VectorIndex:
    kind, metric = spec
    return make_index(kind, DIM, metric, IndexParams())


def vectors(n: int, seed: int = 0) -> Matrix:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def spread_labels(n: int) -> Labels:
    """Labels that are neither contiguous nor zero-based."""
    return np.arange(n, dtype=np.int64) * 3 + 7


def stored(x: Matrix, metric: Metric) -> F64:
    """What the index stores (and the oracle compares against): cosine vectors normalised."""
    x64 = x.astype(np.float64)
    if metric != "cosine":
        return x64
    norms = np.linalg.norm(x64, axis=-1, keepdims=True)
    normalised: F64 = np.divide(x64, norms, out=np.zeros_like(x64), where=norms > 0)
    return normalised


def oracle_scores(queries: Matrix, x: Matrix, metric: Metric) -> F64:
    q, v = stored(queries, metric), stored(x, metric)
    if metric == "l2":
        distances: F64 = np.linalg.norm(q[:, None, :] - v[None, :, :], axis=-1)
        return -distances
    return q @ v.T


def oracle_top(queries: Matrix, x: Matrix, labels: Labels, metric: Metric, k: int) -> Labels:
    """The true ``min(k, n)`` best labels per query, best first."""
    order = np.argsort(-oracle_scores(queries, x, metric), axis=1, kind="stable")
    return labels[order[:, :k]]


def recall(found: Labels, truth: Labels) -> float:
    hits = sum(
        len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)
    )
    return hits / truth.size


def assert_well_formed(labels: Labels, scores: Scores, n_queries: int, k: int) -> None:
    """Shapes and dtypes; per row: unique hits, best first, then padding only."""
    assert labels.shape == scores.shape == (n_queries, k)
    assert labels.dtype == np.int64
    assert scores.dtype == np.float32
    for row_labels, row_scores in zip(labels, scores, strict=True):
        hit = row_labels >= 0
        n_hits = int(hit.sum())
        assert hit[:n_hits].all(), "padding must come after every hit"
        assert (row_labels[n_hits:] == -1).all()
        assert np.isneginf(row_scores[n_hits:]).all()
        assert np.isfinite(row_scores[:n_hits]).all()
        assert len(set(row_labels[:n_hits].tolist())) == n_hits
        assert (np.diff(row_scores[:n_hits]) <= 1e-6).all(), "best first"


def assert_scores_match(
    queries: Matrix, labels: Labels, scores: Scores, x_by_label: dict[int, Matrix], metric: Metric
) -> None:
    """Every returned score is the metric's score of that label."""
    for q, row_labels, row_scores in zip(queries, labels, scores, strict=True):
        hits = row_labels[row_labels >= 0]
        if len(hits) == 0:
            continue
        x = np.stack([x_by_label[int(label)] for label in hits])
        expected = oracle_scores(q[None, :], x, metric)[0]
        np.testing.assert_allclose(row_scores[: len(hits)], expected, rtol=1e-4, atol=1e-3)


def test_is_a_vector_index(index: VectorIndex, spec: Spec) -> None:
    assert isinstance(index, VectorIndex)
    assert index.dimension == DIM
    assert index.metric == spec[1]
    assert len(index) == 0


def test_empty_index_returns_only_padding(index: VectorIndex) -> None:
    for allowed in (None, np.array([1, 2, 3], dtype=np.int64)):
        labels, scores = index.search(vectors(3), 5, allowed=allowed)
        assert_well_formed(labels, scores, 3, 5)
        assert (labels == -1).all()


def test_search_returns_the_best(index: VectorIndex, spec: Spec) -> None:
    kind, metric = spec
    x, labels = vectors(500), spread_labels(500)
    index.add(labels, x)
    assert len(index) == 500
    queries = vectors(20, seed=1)
    found, scores = index.search(queries, 10)
    assert_well_formed(found, scores, 20, 10)
    assert recall(found, oracle_top(queries, x, labels, metric, 10)) >= MIN_RECALL[kind]
    assert_scores_match(queries, found, scores, dict(zip(labels.tolist(), x, strict=True)), metric)


def test_a_stored_vector_finds_itself(index: VectorIndex, spec: Spec) -> None:
    if spec[1] == "ip":
        pytest.skip("under the inner product a vector need not be its own best match")
    x, labels = vectors(300), spread_labels(300)
    index.add(labels, x)
    found, scores = index.search(x[:50], 1)
    assert (found[:, 0] == labels[:50]).all()
    expected = 1.0 if spec[1] == "cosine" else 0.0
    np.testing.assert_allclose(scores[:, 0], expected, atol=1e-3)


def test_batched_and_single_queries_agree(index: VectorIndex) -> None:
    x, labels = vectors(400), spread_labels(400)
    index.add(labels, x)
    queries = vectors(8, seed=2)
    batch_labels, batch_scores = index.search(queries, 7)
    for i, q in enumerate(queries):
        one_labels, one_scores = index.search(q[None, :], 7)
        assert (one_labels[0] == batch_labels[i]).all()
        np.testing.assert_allclose(one_scores[0], batch_scores[i], rtol=1e-5, atol=1e-5)


def test_pads_when_k_exceeds_the_live_count(index: VectorIndex) -> None:
    x, labels = vectors(5), spread_labels(5)
    index.add(labels, x)
    found, scores = index.search(vectors(2, seed=3), 8)
    assert_well_formed(found, scores, 2, 8)
    for row in found:
        assert set(row[:5].tolist()) == set(labels.tolist())
        assert (row[5:] == -1).all()


def test_removed_labels_are_never_returned(index: VectorIndex, spec: Spec) -> None:
    x, labels = vectors(300), spread_labels(300)
    index.add(labels, x)
    gone = labels[::3]
    index.remove(np.concatenate([gone, np.array([10**9, 2], dtype=np.int64)]))  # + unknown
    index.remove(gone[:5])  # again: ignored
    assert len(index) == 300 - len(gone)
    found, scores = index.search(x[::3], 50)  # each query is a removed vector
    assert_well_formed(found, scores, len(gone), 50)
    assert not set(found.ravel().tolist()) & set(gone.tolist())
    kept = np.setdiff1d(np.arange(300), np.arange(300)[::3])
    truth = oracle_top(x[::3], x[kept], labels[kept], spec[1], 50)
    assert recall(found, truth) >= MIN_RECALL[spec[0]]


def test_removing_everything_leaves_an_empty_index(index: VectorIndex) -> None:
    x, labels = vectors(40), spread_labels(40)
    index.add(labels, x)
    index.remove(labels)
    assert len(index) == 0
    found, _ = index.search(x[:3], 4)
    assert (found == -1).all()
    found, _ = index.search(x[:3], 4, allowed=labels)
    assert (found == -1).all()


def test_a_removed_label_can_be_added_again(index: VectorIndex, spec: Spec) -> None:
    x, labels = vectors(100), spread_labels(100)
    index.add(labels, x)
    index.remove(labels[:10])
    fresh = vectors(10, seed=4)
    index.add(labels[:10], fresh)
    assert len(index) == 100
    np.testing.assert_allclose(index.get_vectors(labels[:10]), stored(fresh, spec[1]), atol=1e-6)
    if spec[1] != "ip":
        found, _ = index.search(fresh, 1)
        assert (found[:, 0] == labels[:10]).all()


def test_few_allowed_gives_the_exact_best_among_them(index: VectorIndex, spec: Spec) -> None:
    x, labels = vectors(1000), spread_labels(1000)
    index.add(labels, x)
    rng = np.random.default_rng(5)
    rows = np.sort(rng.choice(1000, size=30, replace=False))
    removed = labels[rows[:5]]
    index.remove(removed)
    unknown = np.array([1, 2, 10**9], dtype=np.int64)
    allowed = np.sort(np.concatenate([labels[rows], unknown]))
    queries = vectors(10, seed=6)
    found, scores = index.search(queries, 10, allowed=allowed)
    assert_well_formed(found, scores, 10, 10)
    live_rows = rows[5:]
    truth = oracle_top(queries, x[live_rows], labels[live_rows], spec[1], 10)
    assert (found == truth).all()  # exact for both kinds: few allowed labels
    assert_scores_match(queries, found, scores, dict(zip(labels.tolist(), x, strict=True)), spec[1])


def test_a_read_only_allowed_array_searched_again_sees_every_change(
    index: VectorIndex, spec: Spec
) -> None:
    """An index may keep what it made of a read-only allowed array for the next searches
    with it; an add, a replaced vector or a removal in between must still show."""
    x, labels = vectors(1000), spread_labels(1000)
    index.add(labels, x)
    rows = np.arange(0, 1000, 25)  # 40 allowed: few, scanned exactly by both kinds
    allowed = labels[rows].copy()
    allowed.flags.writeable = False
    queries = vectors(5, seed=11)
    live = dict(zip(labels.tolist(), x, strict=True))

    def check() -> None:
        for _ in range(2):  # the second search may use what the first kept
            found, scores = index.search(queries, 10, allowed=allowed)
            keys = [label for label in allowed.tolist() if label in live]
            truth = oracle_top(
                queries, np.array([live[key] for key in keys]), np.array(keys), spec[1], 10
            )
            assert (found == truth).all()
            assert_scores_match(queries, found, scores, live, spec[1])

    check()
    target = int(allowed[3])
    live[target] = queries[0] * 3.0  # replaced: now the best match of the first query
    index.add(np.array([target], dtype=np.int64), live[target][None, :])
    check()
    gone = allowed[:10]
    index.remove(gone)
    for label in gone.tolist():
        del live[label]
    check()


def test_many_allowed_returns_only_allowed(index: VectorIndex, spec: Spec) -> None:
    n = 4000  # 60% allowed is past the HNSW brute-force threshold: the graph is filtered
    x, labels = vectors(n), spread_labels(n)
    index.add(labels, x)
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(n, size=int(0.6 * n), replace=False))
    queries = vectors(20, seed=8)
    found, scores = index.search(queries, 10, allowed=labels[rows])
    assert_well_formed(found, scores, 20, 10)
    assert set(found.ravel().tolist()) <= set(labels[rows].tolist())
    truth = oracle_top(queries, x[rows], labels[rows], spec[1], 10)
    assert recall(found, truth) >= MIN_RECALL[spec[0]]


def test_fewer_allowed_than_k_pads(index: VectorIndex) -> None:
    x, labels = vectors(200), spread_labels(200)
    index.add(labels, x)
    allowed = labels[[3, 50, 120]]
    found, scores = index.search(vectors(4, seed=9), 6, allowed=allowed)
    assert_well_formed(found, scores, 4, 6)
    for row in found:
        assert set(row[:3].tolist()) == set(allowed.tolist())
    found, _ = index.search(vectors(2, seed=9), 6, allowed=np.empty(0, dtype=np.int64))
    assert (found == -1).all()


def test_get_vectors_returns_what_was_stored(index: VectorIndex, spec: Spec) -> None:
    x, labels = vectors(50), spread_labels(50)
    index.add(labels, x)
    picked = labels[[40, 2, 17]]
    np.testing.assert_allclose(
        index.get_vectors(picked), stored(x[[40, 2, 17]], spec[1]), rtol=1e-6, atol=1e-6
    )
    got = index.get_vectors(np.empty(0, dtype=np.int64))
    assert got.shape == (0, DIM)
    assert got.dtype == np.float32


def test_grows_past_its_initial_capacity(index: VectorIndex, spec: Spec) -> None:
    x, labels = vectors(2500), spread_labels(2500)
    start = 0
    for size in (1, 1, 700, 1, 1000, 797):
        index.add(labels[start : start + size], x[start : start + size])
        start += size
    assert len(index) == 2500
    np.testing.assert_allclose(index.get_vectors(labels), stored(x, spec[1]), atol=1e-6)
    queries = vectors(10, seed=10)
    found, _ = index.search(queries, 10)
    assert recall(found, oracle_top(queries, x, labels, spec[1], 10)) >= MIN_RECALL[spec[0]]


def test_ef_widens_without_breaking_the_contract(index: VectorIndex, spec: Spec) -> None:
    x, labels = vectors(1000), spread_labels(1000)
    index.add(labels, x)
    queries = vectors(10, seed=11)
    truth = oracle_top(queries, x, labels, spec[1], 10)
    for ef in (1, 10, 400):
        found, scores = index.search(queries, 10, ef=ef)
        assert_well_formed(found, scores, 10, 10)
    found, _ = index.search(queries, 10, ef=400)
    assert recall(found, truth) >= max(MIN_RECALL[spec[0]], 0.95)


def test_concurrent_searches_match_sequential_ones(index: VectorIndex) -> None:
    x, labels = vectors(2000), spread_labels(2000)
    index.add(labels, x)
    queries = vectors(16, seed=12)
    efs: list[int | None] = [None, 10, 300]
    expected = {ef: index.search(queries, 10, ef=ef)[0] for ef in efs}
    failures: list[str] = []

    def worker(ef: int | None) -> None:
        for _ in range(20):
            for q in range(len(queries)):
                found, _ = index.search(queries[q : q + 1], 10, ef=ef)
                if not (found[0] == expected[ef][q]).all():
                    failures.append(f"ef={ef} query={q}")

    threads = [threading.Thread(target=worker, args=(ef,)) for ef in efs * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_make_index_rejects_an_unknown_kind() -> None:
    with pytest.raises(InvalidArgumentError) as excinfo:
        make_index("annoy", DIM, "cosine", IndexParams())
    assert excinfo.value.code == "invalid_argument"
    assert "flat" in str(excinfo.value)
    assert "hnsw" in str(excinfo.value)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_an_empty_index_of_the_largest_dimension_reserves_little(kind: str) -> None:
    """An empty library of 65,536-d vectors once reserved ~514 MiB before its first vector."""
    from arrwdb.adapters.index import make_index
    from arrwdb.domain.limits import DIMENSION
    from arrwdb.domain.models import IndexParams

    index = make_index(kind, DIMENSION.high, "cosine", IndexParams())
    exact = getattr(index, "_vectors", index)  # HNSW keeps an exact copy beside its graph
    assert exact._data.nbytes <= 8 * 2**20
    if kind == "hnsw":
        assert index._graph.max_elements * DIMENSION.high * 4 <= 8 * 2**20
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, DIMENSION.high)).astype(np.float32)
    index.add(np.arange(40, dtype=np.int64), vectors)  # grows past the reservation
    labels, _ = index.search(vectors[:1], 1)
    assert labels[0, 0] == 0
