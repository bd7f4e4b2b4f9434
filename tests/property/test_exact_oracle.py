"""``ExactIndex`` against a brute-force float64 oracle, under random adds, removes and filters.

Ties are allowed to break either way: a result is correct when its scores, sorted, equal the
oracle's best scores and each returned label really has the score returned for it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from arrwdb.adapters.index.exact import ExactIndex
from arrwdb.domain.models import METRICS, Matrix, Metric
from arrwdb.domain.ports import Labels, Scores

F64 = npt.NDArray[np.float64]
LABEL_POOL = 40  # labels come from a small pool, so removed labels get added again

# Values on a 0.01 grid: realistic magnitudes, plenty of exact ties, zeros included.
coordinates = st.integers(-300, 300).map(lambda i: i / 100)


def matrices(rows: int, dimension: int) -> st.SearchStrategy[Matrix]:
    size = rows * dimension
    return st.lists(coordinates, min_size=size, max_size=size).map(
        lambda values: np.array(values, dtype=np.float32).reshape(rows, dimension)
    )


def oracle_scores(query: Matrix, x: F64, metric: Metric) -> F64:
    q = query.astype(np.float64)
    if metric == "l2":
        distances: F64 = np.linalg.norm(x - q, axis=1)
        return -distances
    if metric == "cosine":
        q = _normalised(q[None, :])[0]
        x = _normalised(x)
    return x @ q


def _normalised(x: F64) -> F64:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    normalised: F64 = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return normalised


def check_against_oracle(
    model: dict[int, Matrix],
    queries: Matrix,
    k: int,
    allowed: Labels | None,
    result: tuple[Labels, Scores],
    metric: Metric,
) -> None:
    labels, scores = result
    assert labels.shape == scores.shape == (len(queries), k)
    eligible = sorted(model) if allowed is None else sorted(set(allowed.tolist()) & set(model))
    x = np.array([model[label] for label in eligible], dtype=np.float64).reshape(
        len(eligible), queries.shape[1]
    )
    n_hits = min(k, len(eligible))
    for query, row_labels, row_scores in zip(queries, labels, scores, strict=True):
        assert (row_labels[n_hits:] == -1).all()
        assert np.isneginf(row_scores[n_hits:]).all()
        hits = row_labels[:n_hits].tolist()
        assert len(set(hits)) == n_hits
        assert set(hits) <= set(eligible)
        if n_hits == 0:
            continue
        assert (np.diff(row_scores[:n_hits]) <= 1e-5).all(), "best first"
        truth = oracle_scores(query, x, metric)
        by_label = dict(zip(eligible, truth.tolist(), strict=True))
        np.testing.assert_allclose(
            row_scores[:n_hits], [by_label[h] for h in hits], rtol=1e-4, atol=1e-4
        )
        best = np.sort(truth)[::-1][:n_hits]
        np.testing.assert_allclose(np.sort(row_scores[:n_hits])[::-1], best, rtol=1e-4, atol=1e-4)


@settings(deadline=None, max_examples=150)
@given(data=st.data(), metric=st.sampled_from(METRICS), dimension=st.integers(1, 5))
def test_exact_index_matches_the_oracle(
    data: st.DataObject, metric: Metric, dimension: int
) -> None:
    # A tiny capacity and score budget exercise growth, shrinking and query chunking.
    index = ExactIndex(
        dimension,
        metric,
        initial_capacity=data.draw(st.integers(1, 4)),
        max_score_bytes=data.draw(st.sampled_from([1, 64, 2**20])),
    )
    model: dict[int, Matrix] = {}
    for _ in range(data.draw(st.integers(1, 4), label="rounds")):
        free = [label for label in range(LABEL_POOL) if label not in model]
        new = data.draw(st.lists(st.sampled_from(free), unique=True, max_size=12), label="add")
        if new:
            vectors = data.draw(matrices(len(new), dimension), label="vectors")
            index.add(np.array(new, dtype=np.int64), vectors)
            model.update(zip(new, vectors, strict=True))
        gone = data.draw(st.lists(st.integers(0, LABEL_POOL + 5), max_size=8), label="remove")
        index.remove(np.array(gone, dtype=np.int64))
        for label in gone:
            model.pop(label, None)
        assert len(index) == len(model)

        n_queries = data.draw(st.integers(1, 4), label="n_queries")
        queries = data.draw(matrices(n_queries, dimension), label="queries")
        k = data.draw(st.integers(1, len(model) + 3), label="k")
        allowed_list = data.draw(
            st.none() | st.lists(st.integers(0, LABEL_POOL + 5), unique=True), label="allowed"
        )
        allowed = None if allowed_list is None else np.array(sorted(allowed_list), np.int64)
        result = index.search(queries, k, allowed=allowed)
        check_against_oracle(model, queries, k, allowed, result, metric)

    if model:
        labels = np.array(sorted(model), dtype=np.int64)
        stored = np.array([model[label] for label in labels.tolist()], dtype=np.float64)
        if metric == "cosine":
            stored = _normalised(stored)
        np.testing.assert_allclose(index.get_vectors(labels), stored, rtol=1e-6, atol=1e-6)


@settings(deadline=None, max_examples=25)
@given(
    metric=st.sampled_from(METRICS),
    batches=st.lists(st.integers(1, 120), min_size=1, max_size=6),
    remove_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_many_adds_and_removes_keep_every_row_in_place(
    metric: Metric, batches: list[int], remove_fraction: float, seed: int
) -> None:
    """Doubling and swap-with-last deletion never lose or mix up a row."""
    rng = np.random.default_rng(seed)
    index = ExactIndex(3, metric, initial_capacity=1)
    model: dict[int, Matrix] = {}
    next_label = 0
    for size in batches:
        labels = np.arange(next_label, next_label + size, dtype=np.int64)
        next_label += size
        x = rng.normal(size=(size, 3)).astype(np.float32)
        index.add(labels, x)
        model.update(zip(labels.tolist(), x, strict=True))
        live = np.array(sorted(model), dtype=np.int64)
        gone = live[rng.random(len(live)) < remove_fraction]
        index.remove(rng.permutation(gone))
        for label in gone.tolist():
            del model[label]
    assert len(index) == len(model)
    queries = rng.normal(size=(3, 3)).astype(np.float32)
    k = max(1, len(model))
    check_against_oracle(model, queries, k, None, index.search(queries, k), metric)
