"""HNSW slots: deleted slots are taken by new labels, so churn does not grow the graph, and any
mix of adds, removes and re-adds (also across a save and a load) keeps answering like the truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrwdb.adapters.index.hnsw import HnswIndex
from arrwdb.domain.models import IndexParams

DIM = 8
PARAMS = IndexParams(m=8, ef_construction=64)


def test_churn_reuses_deleted_slots() -> None:
    index = HnswIndex(DIM, "l2", PARAMS, initial_capacity=16)
    rng = np.random.default_rng(0)
    label = 0
    for _ in range(20):  # 20 generations of 100 documents replacing the previous ones
        new = np.arange(label, label + 100, dtype=np.int64)
        index.add(new, rng.standard_normal((100, DIM), dtype=np.float32))
        if label:
            index.remove(np.arange(label - 100, label, dtype=np.int64))
        label += 100
    assert len(index) == 100
    graph = index._graph
    assert graph.element_count <= 200  # the peak live size, not 2,000
    queries = rng.standard_normal((5, DIM), dtype=np.float32)
    found, _ = index.search(queries, 100, ef=400)
    assert sorted(found[0].tolist()) == list(range(label - 100, label))


@settings(max_examples=40)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "save-load"]),
            st.lists(st.integers(0, 30), max_size=8, unique=True),
        ),
        max_size=14,
    )
)
def test_adds_removes_and_readds_match_a_model(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, list[int]]]
) -> None:
    index = HnswIndex(DIM, "l2", PARAMS, initial_capacity=4)
    model: dict[int, np.ndarray] = {}
    rng = np.random.default_rng(1)
    for op, labels in steps:
        array = np.asarray(labels, dtype=np.int64)
        if op == "add":
            vectors = rng.standard_normal((len(array), DIM), dtype=np.float32)
            index.add(array, vectors)
            model.update(zip(labels, vectors, strict=True))
        elif op == "remove":
            index.remove(array)
            for label in labels:
                model.pop(label, None)
        else:
            directory: Path = tmp_path_factory.mktemp("hnsw")
            index.save(directory)
            index = HnswIndex.load(directory, DIM, "l2", PARAMS)
        assert len(index) == len(model)
    live = sorted(model)
    for label in live:  # each live vector is found, as itself, and is its own best match
        assert np.array_equal(index.get_vectors(np.asarray([label]))[0], model[label])
        found, scores = index.search(model[label][None, :], 1, ef=200)
        assert found[0, 0] == label
        assert scores[0, 0] == pytest.approx(0.0, abs=1e-3)
    if live:
        found, _ = index.search(np.zeros((1, DIM), dtype=np.float32), 31, ef=400)
        assert sorted(x for x in found[0].tolist() if x >= 0) == live
