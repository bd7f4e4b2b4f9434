"""Live queries against an exact oracle: after every step of random writes (adds, bulk adds,
upserts, metadata patches, deletes and bulk deletes, several at once from threads), the results
a client rebuilds from ``watch.ready`` and ``watch.entered``/``watch.left`` equal an exact
search of the library as it is; ``watch.match`` events are exactly the step's saved chunks that
reach the threshold and pass the filter. On flat and HNSW libraries.

The oracle reads the library back (every document with its embeddings) and scores every chunk
with numpy: it shares nothing with the engine. The events are read without waiting
(``poll``) as soon as the writes have returned: a write's watch events exist before it is
answered.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import arrwdb
from arrwdb.domain.errors import NotFoundError
from arrwdb.domain.watches import WatchEvent

DIM = 6
RNG = np.random.default_rng(11)
QUERIES = RNG.standard_normal((4, DIM)).astype(np.float32)
#: (k, filter, threshold) of the watches every run starts with; k None: a match watch
WATCHES: list[tuple[int | None, dict[str, Any] | None, float | None]] = [
    (3, None, None),
    (4, {"g": {"$ne": 1}}, None),
    (2, None, 0.2),
    (None, {"g": {"$in": [0, 2]}}, 0.3),
]
TIE = 1e-5

op = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 3), st.integers(0, 10**6)),
    st.tuples(st.just("upsert"), st.integers(0, 99), st.integers(0, 10**6)),
    st.tuples(st.just("patch"), st.integers(0, 99), st.integers(0, 2)),
    st.tuples(st.just("delete"), st.integers(0, 99), st.just(0)),
    st.tuples(st.just("bulk_delete"), st.integers(0, 99), st.just(0)),
)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n else v


def _chunks(seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"text": f"c{seed}-{i}", "embedding": rng.standard_normal(DIM).astype(np.float32)}
        for i in range(1 + seed % 2)
    ]


class Rebuilt:
    """What a client holds of a top-k watch: the results in rank order, from the events."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def apply(self, event: WatchEvent) -> None:
        data = event.data
        if event.type == "watch.ready":
            self.order = [hit["chunk_id"] for hit in data["results"]]
        elif event.type == "watch.entered":
            assert 0 <= data["rank"] <= len(self.order), (data, self.order)
            assert data["chunk_id"] not in self.order
            self.order.insert(data["rank"], data["chunk_id"])
        elif event.type == "watch.left":
            assert self.order[data["rank"]] == data["chunk_id"], (data, self.order)
            assert data["reason"] in ("deleted", "updated", "outranked", "filtered")
            del self.order[data["rank"]]
        else:
            raise AssertionError(f"unexpected {event.type} on a top-k watch")


class WatchMachine(RuleBasedStateMachine):
    index = "flat"

    def __init__(self) -> None:
        super().__init__()
        self.db = arrwdb.open()
        self.lib = self.db.create_library("w", dimension=DIM, embedder=None, index=self.index)
        self.watches: list[tuple[Any, Any, Rebuilt | None, int]] = []
        self.seen = 0  # the last change event id a step's events may name
        self.next_id = 0

    @initialize()
    def register(self) -> None:
        for i, (k, spec, threshold) in enumerate(WATCHES):
            self._watch(i, k, spec, threshold)

    def _watch(self, q: int, k: int | None, spec: Any, threshold: float | None) -> None:
        handle = self.lib.watch(QUERIES[q], k=k, filter=spec, threshold=threshold)
        listener = handle.events(timeout=0)
        ready = next(iter(listener))
        assert ready.type == "watch.ready"
        rebuilt = None
        if k is not None:
            rebuilt = Rebuilt()
            rebuilt.apply(ready)
        else:
            assert ready.data["results"] == []
        self.watches.append((handle, listener, rebuilt, q))
        if rebuilt is not None:
            self._check_topk(handle.info, rebuilt, QUERIES[q])

    # -- the oracle ---------------------------------------------------------------------------

    def _chunks_now(self) -> list[tuple[str, str, dict[str, Any], np.ndarray]]:
        out = []
        cursor = None
        while True:
            page = self.lib.list_documents(limit=1000, cursor=cursor)
            for doc in page.documents:
                full = self.lib.get_document(doc.id, include_embedding=True)
                for chunk in full.chunks:
                    assert chunk.embedding is not None
                    out.append((chunk.id, doc.id, dict(full.metadata), chunk.embedding))
            cursor = page.next_cursor
            if cursor is None:
                return out

    def _scored(self, info: Any, query: np.ndarray, chunks: list[Any]) -> list[tuple[float, str]]:
        q = _unit(query.astype(np.float64))
        spec = info.filter
        out = []
        for chunk_id, _, metadata, vector in chunks:
            if spec is not None and not _passes(spec, metadata):
                continue
            score = float(q @ _unit(vector.astype(np.float64)))
            if info.threshold is not None and score < info.threshold - TIE:
                continue
            out.append((score, chunk_id))
        out.sort(key=lambda sc: (-sc[0], sc[1]))
        return out

    def _check_topk(self, info: Any, rebuilt: Rebuilt, query: np.ndarray) -> None:
        scored = self._scored(info, query, self._chunks_now())
        expected = [chunk_id for _, chunk_id in scored[: info.k]]
        if rebuilt.order == expected:
            return
        # equal but for ties at the boundary (or within float32 rounding of the threshold)
        score_of = {c: s for s, c in scored}
        assert len(rebuilt.order) == len(expected) or _near_floor(info, scored, len(rebuilt.order))
        kth = scored[info.k - 1][0] if len(scored) >= info.k else None
        for chunk_id in set(rebuilt.order) ^ set(expected):
            score = score_of.get(chunk_id)
            assert score is not None, f"{chunk_id} is not in the library (or fails the filter)"
            near = kth is not None and abs(score - kth) <= TIE
            assert near or _near_floor(info, scored, 0), (rebuilt.order, expected, scored)

    # -- the writes ---------------------------------------------------------------------------

    def _doc_ids(self) -> list[str]:
        return sorted(d.id for d in self.lib.list_documents(limit=1000).documents)

    def _run(self, op: tuple[str, int, int], targets: list[str]) -> Callable[[], Any] | None:
        kind, a, b = op
        lib = self.lib
        if kind == "add":
            docs = []
            for i in range(a):  # ids of our own: the runs of one example are the same
                self.next_id += 1
                docs.append(
                    {
                        "id": f"d{self.next_id:03d}",
                        "title": "t",
                        "chunks": _chunks(b + i),
                        "metadata": {"g": (b + i) % 3},
                    }
                )
            return lambda: lib.add_documents(docs)
        if not targets:
            return None
        doc_id = targets.pop(a % len(targets))
        if kind == "upsert":
            chunks, g = _chunks(b), b % 3
            return lambda: lib.upsert_document(doc_id, "u", chunks=chunks, metadata={"g": g})
        if kind == "patch":
            return lambda: lib.update_document(doc_id, metadata={"g": b})
        if kind == "delete":
            return lambda: lib.delete_document(doc_id)
        ids = [doc_id] + ([targets.pop(0)] if targets else [])
        return lambda: lib.delete_documents(ids)

    @rule(ops=st.lists(op, min_size=1, max_size=3))
    def step(self, ops: list[tuple[str, int, int]]) -> None:
        targets = self._doc_ids()
        calls = [c for c in (self._run(o, targets) for o in ops) if c is not None]
        before = set(self._doc_ids())
        errors: list[BaseException] = []

        def call(fn: Callable[[], Any]) -> None:
            try:
                fn()
            except NotFoundError:  # (a target deleted by a concurrent call: not generated)
                pass
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(fn,)) for fn in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        self._check_events(before)

    @rule(q=st.integers(0, len(QUERIES) - 1), k=st.integers(1, 5), filtered=st.booleans())
    def watch_more(self, q: int, k: int, filtered: bool) -> None:
        if len(self.watches) < 7:
            self._watch(q, k, {"g": {"$gte": 1}} if filtered else None, None)

    def _check_events(self, before: set[str]) -> None:
        head = self.db.service.last_event_id
        changed = self._saved_since(self.seen)
        chunks = self._chunks_now()
        for handle, listener, rebuilt, q in self.watches:
            events = []
            while (event := listener.poll()) is not None:
                events.append(event)
            keys = [e.key for e in events]
            assert keys == sorted(keys)
            assert len(set(keys)) == len(keys)
            for e in events:
                assert self.seen < int(e.data["event_id"]) <= head, (e, self.seen, head)
            info = handle.info
            if rebuilt is not None:
                for e in events:
                    rebuilt.apply(e)
                self._check_topk(info, rebuilt, QUERIES[q])
            else:
                got = sorted(e.data["chunk_id"] for e in events)
                scored = self._scored(info, QUERIES[q], [c for c in chunks if c[0] in changed])
                want = sorted(chunk_id for _, chunk_id in scored)
                assert got == want, (got, want)
        self.seen = head
        del before

    def _saved_since(self, after: int) -> set[str]:
        """The chunk ids of the documents saved after change ``after`` (as they are now)."""
        docs = set()
        for event in self.lib.events(since=str(after), timeout=0):
            if event.type in ("document.added", "document.updated"):
                docs.add(event.data["document_id"])
        out = set()
        for doc_id in docs:
            with contextlib.suppress(NotFoundError):
                out.update(c.id for c in self.lib.get_document(doc_id).chunks)
        return out

    @invariant()
    def nothing_pending(self) -> None:
        for _, listener, _, _ in self.watches:
            assert listener.poll() is None

    def teardown(self) -> None:
        for handle, listener, _, _ in self.watches:
            listener.close()
            handle.close()
        self.db.close()


def _passes(spec: dict[str, Any], metadata: dict[str, Any]) -> bool:
    ((key, cond),) = spec.items()
    ((operator, value),) = cond.items()
    got = metadata.get(key)
    if operator == "$ne":
        return got != value
    if operator == "$in":
        return got in value
    if operator == "$gte":
        return got is not None and got >= value
    raise AssertionError(operator)


def _near_floor(info: Any, scored: list[tuple[float, str]], _: int) -> bool:
    """Whether a chunk sits within rounding of the threshold (float32 vs float64)."""
    return info.threshold is not None and any(
        abs(score - info.threshold) <= TIE for score, _ in scored
    )


class HnswWatchMachine(WatchMachine):
    index = "hnsw"


SETTINGS = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWatchesFlat = pytest.mark.filterwarnings("ignore")(WatchMachine.TestCase)
TestWatchesFlat.settings = SETTINGS
TestWatchesHnsw = HnswWatchMachine.TestCase
TestWatchesHnsw.settings = SETTINGS
