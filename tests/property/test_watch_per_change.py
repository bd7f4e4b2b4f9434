"""Live queries are exact per change, also inside one batch of many changes.

A batch here mixes, on distinct documents, metadata patches (the same chunk, new metadata: it
may start or stop passing a filter), deletes and upserts (new documents, or new content for an
old one), committed together through the service's one write path (as a bulk write, or several
writers' changes grouped in one commit, are). After the batch, the events of each watch are
applied change by change: after those caused by change ``N``, the top-k set a client rebuilds
must equal an exact search of the library as it was after ``N`` (a model the test keeps), and a
match watch must have been told at ``N`` of exactly the chunk ``N`` saved if it passes the
filter and the threshold then. On flat and HNSW libraries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arrwdb
from arrwdb.domain import _rules as rules
from arrwdb.domain._documents import as_new_document
from arrwdb.domain.changes import Change

DIM = 4
TIE = 1e-5
CHANGES = ("watch.entered", "watch.left", "watch.match")
QUERY = np.asarray([1.0, 0.3, -0.2, 0.1], dtype=np.float32)
#: (k, filter, threshold); k None: a match watch
WATCHES: list[tuple[int | None, dict[str, Any] | None, float | None]] = [
    (2, None, None),
    (2, {"g": {"$ne": 1}}, None),
    (3, {"g": {"$in": [0, 2]}}, 0.1),
    (None, {"g": {"$ne": 2}}, 0.2),
]

vectors = st.lists(st.floats(-1, 1, allow_nan=False, width=32), min_size=DIM, max_size=DIM).filter(
    lambda v: float(np.linalg.norm(v)) > 0.1
)
groups = st.integers(0, 2)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("patch"), st.integers(0, 99), groups),
        st.tuples(st.just("delete"), st.integers(0, 99), st.just(0)),
        st.tuples(st.just("upsert"), st.integers(0, 99), st.tuples(vectors, groups)),
        st.tuples(st.just("add"), st.just(0), st.tuples(vectors, groups)),
        st.tuples(st.just("delete_all"), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=6,
)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _passes(spec: dict[str, Any] | None, g: int) -> bool:
    if spec is None:
        return True
    ((_, cond),) = spec.items()
    ((op, value),) = cond.items()
    return g != value if op == "$ne" else g in value


class Client:
    """A top-k watch as a client holds it: document ids in rank order (one chunk each)."""

    def __init__(self, ready: Any) -> None:
        self.order = [hit["document_id"] for hit in ready.data["results"]]

    def apply(self, event: Any) -> None:
        data = event.data
        if event.type == "watch.entered":
            assert data["document_id"] not in self.order
            self.order.insert(data["rank"], data["document_id"])
        elif event.type == "watch.left":
            assert self.order[data["rank"]] == data["document_id"], (data, self.order)
            del self.order[data["rank"]]
        elif event.type == "watch.ready":
            self.order = [hit["document_id"] for hit in data["results"]]


def _expected(model: dict[str, tuple[np.ndarray, int]], k: int, spec: Any, floor: float | None):
    q = _unit(QUERY.astype(np.float64))
    scored = sorted(
        (
            (float(q @ _unit(v.astype(np.float64))), doc)
            for doc, (v, g) in model.items()
            if _passes(spec, g)
        ),
        key=lambda sd: (-sd[0], sd[1]),
    )
    if floor is not None:
        scored = [sd for sd in scored if sd[0] >= floor - TIE]
    return scored, k


def _check(order: list[str], scored: list[tuple[float, str]], k: int, where: str) -> None:
    expected = [doc for _, doc in scored[:k]]
    if order == expected:
        return
    score = {doc: s for s, doc in scored}
    kth = scored[k - 1][0] if len(scored) >= k else None
    assert len(order) == len(expected), (where, order, expected, scored)
    for doc in set(order) ^ set(expected):  # only ties with the k-th (or the floor) may differ
        assert doc in score, (where, doc, order, expected)
        assert kth is not None, (where, order, expected, scored)
        assert abs(score[doc] - kth) <= TIE, (where, order, expected, scored)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.lists(st.tuples(vectors, groups), min_size=1, max_size=8),
    rounds=st.lists(ops, min_size=1, max_size=3),
)
def test_every_change_of_a_batch(index: str, start: list[Any], rounds: list[Any]) -> None:
    with arrwdb.open() as db:
        lib = db.create_library("w", dimension=DIM, embedder=None, index=index)
        service = db.service
        model: dict[str, tuple[np.ndarray, int]] = {}
        made = 0

        def document(doc_id: str, vector: list[float], g: int) -> dict[str, Any]:
            return {
                "id": doc_id,
                "title": "t",
                "metadata": {"g": g},
                "chunks": [{"text": doc_id, "embedding": vector}],
            }

        lib.add_documents([document(f"d{i}", v, g) for i, (v, g) in enumerate(start)])
        for i, (v, g) in enumerate(start):
            model[f"d{i}"] = (np.asarray(v, dtype=np.float32), g)
        made = len(start)

        watches = []
        handles = []  # (kept: a handle that is let go of closes its watch)
        for k, spec, threshold in WATCHES:
            handle = lib.watch(QUERY, k=k, filter=spec, threshold=threshold)
            handles.append(handle)
            listener = handle.events(timeout=0)
            ready = next(iter(listener))
            watches.append((k, spec, threshold, listener, Client(ready) if k else None))
        library = service.get_library(lib.id)

        for batch_ops in rounds:
            builds = []
            steps: list[tuple[str, str, Any]] = []  # what each change does, in order
            used: set[str] = set()
            expanded = []
            for kind, n, arg in batch_ops:  # every live document, deleted one after another
                if kind == "delete_all":
                    expanded += [("delete", j, 0) for j in range(len(model))]
                else:
                    expanded.append((kind, n, arg))
            for kind, n, arg in expanded:
                live = sorted(set(model) - used)
                if kind == "add" or not live:
                    if kind != "add" and kind != "upsert":
                        continue
                    doc_id = f"d{made}"
                    made += 1
                else:
                    doc_id = live[n % len(live)]
                if kind == "patch" and model[doc_id][1] == arg:
                    continue  # (a patch that changes nothing writes nothing)
                used.add(doc_id)
                if kind == "patch":
                    builds.append(rules.update_fields(lib.id, doc_id, None, {"g": arg}))
                elif kind == "delete":
                    builds.append(rules.delete_document(lib.id, doc_id))
                else:
                    vector, g = arg
                    prepared = service._builder.prepare(
                        library, [as_new_document(document(doc_id, vector, g))]
                    )
                    builds.append(rules.upsert_documents(lib.id, prepared))
                steps.append((kind, doc_id, arg))

            def together(head: Any, builds: list[Any] = builds) -> list[Change]:
                return [change for build in builds for change in build(head)]

            if not steps:
                continue
            first = service.last_event_id + 1
            batch = service._write(together)
            assert batch.first == first
            assert batch.last == first + len(steps) - 1

            events = [list(iter(listener.poll, None)) for *_, listener, _ in watches]
            for offset, (kind, doc_id, arg) in enumerate(steps):
                position = first + offset
                saved = None
                if kind == "patch":
                    model[doc_id] = (model[doc_id][0], arg)
                    saved = doc_id
                elif kind == "delete":
                    del model[doc_id]
                else:
                    model[doc_id] = (np.asarray(arg[0], dtype=np.float32), arg[1])
                    saved = doc_id
                for (k, spec, threshold, _, client), mine in zip(watches, events, strict=True):
                    now = [
                        e for e in mine if e.type in CHANGES and e.data["event_id"] == str(position)
                    ]
                    where = f"after change {position} ({kind} {doc_id}) of {steps}"
                    if client is not None:
                        for event in now:
                            client.apply(event)
                        scored, kk = _expected(model, k, spec, threshold)
                        _check(client.order, scored, kk, where)
                    else:
                        got = [e.data["document_id"] for e in now]
                        want = []
                        if saved is not None:
                            v, g = model[saved]
                            score = float(_unit(QUERY) @ _unit(v))
                            if _passes(spec, g) and score >= threshold - TIE:
                                want = [saved]
                            elif abs(score - threshold) <= TIE:
                                want = got  # on the floor: either is right
                        assert got == want, (where, got, want)
