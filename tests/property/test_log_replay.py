"""The log is the one truth: replaying it from position 0 into a fresh projection gives the
state the live projection has, after any interleaving of concurrent writes.

A hypothesis state machine drives the real service (memory and disk stores, exact indexes):
each step starts a few writes at once, from several threads (creating, renaming and deleting
libraries, adding, patching, replacing and deleting documents; some of them fail, as racing
writes do). After each step the whole log is read back (``store.read``) and applied by a
projector of its own to an empty projection; it must equal the live one: the libraries (their
records and counts), each library's documents and chunks (ids, titles, text, metadata), and
what an exact search returns. Event ids must be the positions, without gaps.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from arrwdb.adapters.embedders.hashing import HashingEmbedder
from arrwdb.adapters.hub.local import LocalEventHub
from arrwdb.adapters.index import make_index
from arrwdb.adapters.storage.disk import DiskStore
from arrwdb.adapters.storage.memory import InMemoryStore
from arrwdb.domain.errors import ArrwdbError
from arrwdb.domain.events import StartPoint
from arrwdb.domain.models import SearchQuery
from arrwdb.domain.ports import Store
from arrwdb.domain.projection import Projection, Projector
from arrwdb.domain.service import VectorDBService

DIM = 4
QUERIES = np.random.default_rng(7).standard_normal((3, DIM)).astype(np.float32)

write = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("rename"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("drop"), st.integers(0, 3), st.just(0)),
    st.tuples(st.just("add"), st.integers(0, 3), st.integers(1, 4)),
    st.tuples(st.just("title"), st.integers(0, 3), st.integers(0, 9)),
    st.tuples(st.just("metadata"), st.integers(0, 3), st.integers(0, 9)),
    st.tuples(st.just("content"), st.integers(0, 3), st.integers(0, 9)),
    st.tuples(st.just("delete"), st.integers(0, 3), st.integers(0, 9)),
)


class ReplayMachine(RuleBasedStateMachine):
    make_store: Callable[[Path], Store]

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="arrwdb-replay-"))
        self.store = self.make_store(self.dir)
        self.store.start()
        self.hub = LocalEventHub(history_size=100_000)
        self.hub.start(self.store.head, None)
        self.service = VectorDBService(
            self.store, self.hub, make_index, {"hashing": HashingEmbedder()}
        )
        self.service.load()
        self.events = self.hub.subscribe(None, StartPoint(None))
        self.seed = 0

    def teardown(self) -> None:
        event(f"{self.store.head // 25 * 25}+ changes in the log")
        self.service.close()
        self.hub.stop()
        self.store.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the writes ---------------------------------------------------------------------------

    def _library(self, which: int) -> str | None:
        libraries = self.service.list_libraries()
        return libraries[which % len(libraries)].id if libraries else None

    def _document(self, library_id: str, which: int) -> str | None:
        try:
            items = self.service.list_documents(library_id, limit=1000).documents
        except ArrwdbError:
            return None
        return items[which % len(items)].id if items else None

    def _chunks(self, count: int) -> list[dict[str, Any]]:
        self.seed += 1
        vectors = np.random.default_rng(self.seed).standard_normal((count, DIM))
        return [
            {
                "text": f"c{self.seed}.{i}",
                "embedding": vectors[i].astype(np.float32),
                "metadata": {"i": i},
            }
            for i in range(count)
        ]

    def _prepare(self, op: tuple[str, int, int]) -> Callable[[], object] | None:
        """One write as a call to make (its targets are picked now, so racing calls collide)."""
        kind, which, arg = op
        service = self.service
        self.seed += 1
        seed = self.seed
        if kind == "create":
            return lambda: service.create_library(f"lib{which}", dimension=DIM, index="flat")
        library_id = self._library(which)
        if library_id is None:
            return None
        if kind == "rename":
            return lambda: service.update_library(
                library_id, name=f"lib{arg}", description=str(seed)
            )
        if kind == "drop":
            return lambda: service.delete_library(library_id)
        if kind == "add":
            docs = [
                {"title": f"d{seed}.{i}", "chunks": self._chunks(2), "metadata": {"s": seed}}
                for i in range(arg)
            ]
            return lambda: service.add_documents(library_id, docs)
        doc_id = self._document(library_id, arg)
        if doc_id is None:
            return None
        if kind == "title":
            return lambda: service.update_document(library_id, doc_id, title=f"t{seed}")
        if kind == "metadata":
            return lambda: service.update_document(library_id, doc_id, metadata={"m": seed})
        if kind == "content":
            chunks = self._chunks(1 + seed % 3)
            return lambda: service.update_document(library_id, doc_id, chunks=chunks)
        return lambda: service.delete_document(library_id, doc_id)

    @initialize()
    def two_libraries(self) -> None:
        for which in range(2):
            library = self.service.create_library(f"lib{which}", dimension=DIM, index="flat")
            docs = [{"title": f"d{which}.{i}", "chunks": self._chunks(2)} for i in range(3)]
            self.service.add_documents(library.id, docs)

    @rule(ops=st.lists(write, min_size=2, max_size=4))
    def concurrent_writes(self, ops: list[tuple[str, int, int]]) -> None:
        calls = [call for call in map(self._prepare, ops) if call is not None]
        barrier = threading.Barrier(len(calls)) if calls else None

        def run(call: Callable[[], object]) -> None:
            assert barrier is not None
            barrier.wait()
            with contextlib.suppress(ArrwdbError):  # a racing write removed its target...
                call()

        threads = [threading.Thread(target=run, args=(call,)) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def replaying_the_log_gives_the_live_projection(self) -> None:
        fresh = Projection(make_index)
        replay_hub = LocalEventHub(history_size=100_000)
        replay_hub.start(0, None)
        replayed = replay_hub.subscribe(None, StartPoint(None))
        Projector(fresh, self.store, replay_hub).catch_up(self.store.head)
        live = self.service.projection
        assert fresh.applied == live.applied == self.store.head
        assert _projection_view(fresh) == _projection_view(live)
        assert _projection_view(live) == _tables_view(self.store, live)  # and the store agrees
        for library in live.libraries():
            for query in QUERIES:
                got = self.service.search(library.id, SearchQuery(vector=query, k=10)).results
                with fresh.state(library.id).lock.read():
                    again = fresh.state(library.id).search(query[None, :], 10, None, None)[0]
                assert [(h.chunk_id, h.score) for h in got] == [
                    (h.chunk_id, h.score) for h in again
                ]
        # the events: one per position, in order, the same from the log as live
        live_events = []
        while (event := self.events.poll()) is not None:
            live_events.append(event)
        replay_events = []
        while (event := replayed.poll()) is not None:
            replay_events.append(event)
        assert [e.seq for e in replay_events] == list(range(1, self.store.head + 1))
        self.seen = getattr(self, "seen", [])
        self.seen += live_events
        assert [(e.id, e.type, e.library_id, dict(e.data)) for e in self.seen] == [
            (e.id, e.type, e.library_id, dict(e.data)) for e in replay_events
        ]
        replay_hub.stop()


def _projection_view(projection: Projection) -> object:
    """Everything a projection serves, as comparable values."""
    out = {}
    for library_id, state in sorted(projection.states.items()):
        lib = state.library
        refs = sorted(
            (r[0], r[1], r[2], r[3], sorted(r[4].items())) for r in state.refs if r is not None
        )
        out[library_id] = (
            lib.name,
            lib.description,
            lib.dimension,
            lib.document_count,
            lib.chunk_count,
            lib.updated_at,
            sorted(state.doc_labels),
            refs,
            len(state.index) if state.index is not None else 0,
        )
    return out, sorted(projection.names.items())


def _tables_view(store: Store, projection: Projection) -> object:
    """The same view, computed from the store's tables (a projection of its own: the catalog),
    with the index size the documents give."""
    out = {}
    libraries = {lib.id: lib for lib in store.list_libraries()}
    for library_id, lib in sorted(libraries.items()):
        docs = list(store.iter_documents(library_id))
        refs = sorted(
            (
                c.id,
                d.id,
                d.title,
                c.text,
                sorted({**d.metadata, **c.metadata}.items()),
            )
            for d in docs
            for c in d.chunks
        )
        out[library_id] = (
            lib.name,
            lib.description,
            lib.dimension,
            lib.document_count,
            lib.chunk_count,
            lib.updated_at,
            sorted(d.id for d in docs),
            refs,
            sum(len(d.chunks) for d in docs),
        )
    return out, sorted((lib.name, lib.id) for lib in libraries.values())


class MemoryReplay(ReplayMachine):
    @staticmethod
    def make_store(path: Path) -> Store:
        return InMemoryStore(history_size=1_000_000)


class DiskReplay(ReplayMachine):
    @staticmethod
    def make_store(path: Path) -> Store:
        return DiskStore(path, fsync="never", snapshot_every=10**9, background_snapshots=False)


_settings = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReplayOverMemory = MemoryReplay.TestCase
TestReplayOverMemory.settings = _settings
TestReplayOverDisk = DiskReplay.TestCase
TestReplayOverDisk.settings = _settings
