"""The disk store against crashes, on random histories.

A hypothesis state machine commits random batches of library/document changes to a ``DiskStore``
and to a model (plain dicts, and the batches committed). Its crash step lets go of the files as
a killed process would, cuts the newest log segment at a random byte (and may leave junk after
the cut, or a half-written snapshot), and reopens: the store must then equal the model as it was
after the last record that survived whole, with the same positions, the same batches to replay
and the same event history (as much of it as the store promises to keep). What random runs
reach rarely (damage in the middle, a second opener, a full disk, a refused file, a failed
fsync, backups, group commit, retention, data of an earlier format) is in
``tests/unit/test_disk_store.py``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from arrwdb.adapters.storage.disk import DiskStore
from arrwdb.domain.changes import (
    LIBRARY_FIELDS,
    Batch,
    Change,
    DocumentDeleted,
    DocumentSaved,
    LibraryCreated,
    LibraryDeleted,
    LibraryUpdated,
)
from arrwdb.domain.errors import AlreadyExistsError, HistoryLostError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library, new_id, utcnow
from arrwdb.domain.ports import Head
from store_helpers import (
    DIM,
    KEEP_ALL,
    batch_view,
    batches_from,
    events_from,
    listed,
    make_document,
    view,
)


def _recount(library: Library, docs: dict[str, Document], change: Change) -> Library:
    """A library's record once one of its document changes is applied, derived as a store
    derives it: counts of what it holds, the dimension of its first vector, the change's time."""
    dimension = library.dimension
    if dimension is None and isinstance(change, DocumentSaved):
        vectors = [c.embedding for c in change.document.chunks if c.embedding is not None]
        dimension = len(vectors[0]) if vectors else None
    return replace(
        library,
        dimension=dimension,
        document_count=len(docs),
        chunk_count=sum(len(d.chunks) for d in docs.values()),
        updated_at=change.at,
    )


@dataclass(frozen=True)
class Model:
    """What a store must hold once ``batches`` are committed (never changed in place)."""

    libraries: dict[str, Library] = field(default_factory=dict)
    documents: dict[str, dict[str, Document]] = field(default_factory=dict)
    batches: tuple[Batch, ...] = ()

    @property
    def position(self) -> int:
        return self.batches[-1].last if self.batches else 0

    @property
    def events(self) -> list[Event]:
        return [e for batch in self.batches for e in batch.events()]

    def named(self, name: str) -> bool:
        return any(lib.name == name for lib in self.libraries.values())

    def after(self, changes: Sequence[Change]) -> Model:
        """The model once ``changes`` are committed as the next batch."""
        libraries = dict(self.libraries)
        documents = {lib_id: dict(docs) for lib_id, docs in self.documents.items()}
        for change in changes:
            if isinstance(change, LibraryCreated):
                libraries[change.library_id], documents[change.library_id] = change.library, {}
            elif isinstance(change, LibraryUpdated):
                fields = {name: getattr(change.library, name) for name in change.changed}
                old = libraries[change.library_id]
                libraries[change.library_id] = replace(old, **fields, updated_at=change.at)
            elif isinstance(change, LibraryDeleted):
                del libraries[change.library_id], documents[change.library_id]
            else:
                docs = documents[change.library_id]
                if isinstance(change, DocumentSaved):
                    docs[change.document.id] = change.document  # a replaced one keeps its place
                else:
                    del docs[change.document_id]
                library = libraries[change.library_id]
                libraries[change.library_id] = _recount(library, docs, change)
        batch = Batch(self.position + 1, tuple(changes))
        return Model(libraries, documents, (*self.batches, batch))


NAMES = st.text(alphabet="abc", max_size=2)  # collisions are frequent: names must stay unique


class DiskCrashMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="arrwdb-crash-"))
        self.history_size = KEEP_ALL
        self._store: DiskStore | None = None
        self.model = Model()
        self.history = [self.model]  # history[n]: the model after n records
        self.records: list[tuple[str, int]] = []  # record n+1 ends in segment, at byte
        self.created: set[str] = set()  # every library id ever committed
        self.peak = 0  # the highest position committed (a crash may cut back below it)

    @initialize(history_size=st.sampled_from([3, KEEP_ALL]))
    def open_store(self, history_size: int) -> None:
        """Every event kept, or only about the last three (snapshots then drop segments)."""
        self.history_size = history_size
        self._store = self.open()

    @property
    def store(self) -> DiskStore:
        assert self._store is not None
        return self._store

    def open(self) -> DiskStore:
        store = DiskStore(
            self.dir,
            fsync="never",
            segment_bytes=1500,
            snapshot_every=7,
            background_snapshots=False,
            history_size=self.history_size,
        )
        store.start()
        return store

    def write(
        self,
        changes: Sequence[Change],
        taken: Callable[[Head], bool] = lambda head: False,
        refused: bool = False,
    ) -> None:
        """Write ``changes`` unless ``taken(head)``: then the write must be refused, which the
        model predicts (``refused``), and use no position and no record."""

        def build(head: Head) -> Sequence[Change]:
            if taken(head):
                raise AlreadyExistsError("taken")
            return changes

        store, model = self.store, self.model
        if refused:
            records = store.statistics().last_seq
            with pytest.raises(AlreadyExistsError):
                store.write(build)
            assert (store.head, store.statistics().last_seq) == (model.position, records)
            return
        pending = store.write(build)
        newest = max(self.dir.glob("wal-*.log"))  # the record is its last bytes
        end = newest.stat().st_size
        batch = pending.wait()
        # the next positions, without a gap, holding the changes as they were written
        assert batch_view(batch) == batch_view(Batch(model.position + 1, tuple(changes)))
        self.model = model.after(changes)
        self.history.append(self.model)
        self.peak = max(self.peak, self.model.position)
        self.records.append((newest.name, end))
        self.created.update(c.library_id for c in changes if isinstance(c, LibraryCreated))

    def kept_from(self) -> int:
        """The oldest position whose event and batch the store must still hold: that of the
        last ``history_size`` positions, counted from the highest head it reached. Old segments
        dropped then are not brought back when a crash cuts the newest records (``fsync="never"``
        promises nothing more after a power loss), so the floor stays."""
        if self.history_size >= KEEP_ALL:
            return 1
        return max(1, self.peak - self.history_size + 1)

    def pick(self, index: int, with_documents: bool = False) -> Library:
        ids = [i for i in self.model.libraries if not with_documents or self.model.documents[i]]
        return self.model.libraries[ids[index % len(ids)]]

    def has_libraries(self) -> bool:
        return bool(self.model.libraries)

    def has_documents(self) -> bool:
        return any(self.model.documents.values())

    @rule(name=NAMES, dimension=st.sampled_from([None, DIM]))
    def create_library(self, name: str, dimension: int | None) -> None:
        lib = Library(id=new_id(), name=name, dimension=dimension, metadata={"name": name})
        self.write(
            [LibraryCreated(lib, lib.created_at)],
            taken=lambda head: head.library_named(name) is not None,
            refused=self.model.named(name),
        )

    @precondition(has_libraries)
    @rule(
        index=st.integers(0, 9),
        fields=st.sets(st.sampled_from(LIBRARY_FIELDS), min_size=1),
        name=NAMES,
        description=st.text(max_size=6),
        stale=st.booleans(),
    )
    def update_library(
        self, index: int, fields: set[str], name: str, description: str, stale: bool
    ) -> None:
        old, at = self.pick(index), utcnow()
        values: dict[str, Any] = {
            "name": name,
            "description": description,
            "metadata": {"d": description},
        }
        new = {f: values[f] for f in sorted(fields)}
        record = replace(old, **new, updated_at=at)
        if stale:  # only the fields named in ``changed`` are taken from the record
            record = replace(record, document_count=99, chunk_count=99)
            if "description" not in fields:
                record = replace(record, description="stale")
        renamed = "name" in fields and name != old.name
        self.write(
            [LibraryUpdated(record, tuple(new), at)],
            taken=lambda head: renamed and head.library_named(name) is not None,
            refused=renamed and self.model.named(name),
        )

    @precondition(has_libraries)
    @rule(index=st.integers(0, 9))
    def delete_library(self, index: int) -> None:
        lib = self.pick(index)
        self.write([LibraryDeleted(lib.id, lib.name, utcnow())])

    @precondition(has_libraries)
    @rule(
        index=st.integers(0, 9),
        sizes=st.lists(st.integers(0, 3), min_size=1, max_size=3),
        seed=st.integers(0, 99),
        reuse=st.booleans(),
    )
    def add_documents(self, index: int, sizes: list[int], seed: int, reuse: bool) -> None:
        lib, at = self.pick(index), utcnow()
        docs = [make_document(lib.id, f"t{seed}", n, seed + i) for i, n in enumerate(sizes)]
        existing = list(self.model.documents[lib.id])
        if reuse and existing:  # a new document with a taken id: refused
            taken_id = existing[seed % len(existing)]
            docs[-1] = make_document(lib.id, "again", 1, seed, doc_id=taken_id)
        self.write(
            [DocumentSaved(doc, False, at) for doc in docs],
            taken=lambda head: any(head.document(lib.id, d.id) is not None for d in docs),
            refused=reuse and bool(existing),
        )

    @precondition(has_documents)
    @rule(
        index=st.integers(0, 9),
        which=st.integers(0, 9),
        chunks=st.integers(0, 3),
        seed=st.integers(0, 99),
        content=st.booleans(),
    )
    def replace_document(
        self, index: int, which: int, chunks: int, seed: int, content: bool
    ) -> None:
        lib, at = self.pick(index, with_documents=True), utcnow()
        docs = self.model.documents[lib.id]
        old = list(docs.values())[which % len(docs)]
        if content:  # new chunks
            new = make_document(lib.id, f"r{seed}", chunks, seed, doc_id=old.id)
            doc = replace(new, created_at=old.created_at, updated_at=at)
        else:  # the same chunks, another title and metadata
            doc = replace(old, title=f"r{seed}", metadata={"seed": seed}, updated_at=at)
        self.write([DocumentSaved(doc, True, at)])

    @precondition(has_documents)
    @rule(index=st.integers(0, 9), which=st.integers(0, 9))
    def delete_document(self, index: int, which: int) -> None:
        lib = self.pick(index, with_documents=True)
        docs = self.model.documents[lib.id]
        doc = list(docs.values())[which % len(docs)]
        self.write([DocumentDeleted(lib.id, doc.id, doc.title, utcnow())])

    @rule(
        sizes=st.lists(st.integers(0, 2), max_size=2),
        seed=st.integers(0, 99),
        index=st.integers(0, 9),
        touch_others=st.booleans(),
        delete_it=st.booleans(),
    )
    def mixed_batch(
        self, sizes: list[int], seed: int, index: int, touch_others: bool, delete_it: bool
    ) -> None:
        """One commit of changes of several libraries: a new library, its documents, changes
        of another library, and maybe the new library's deletion."""
        at = utcnow()
        lib = Library(id=new_id(), name=f"mixed {seed} {new_id()}")
        changes: list[Change] = [LibraryCreated(lib, at)]
        changes += [
            DocumentSaved(make_document(lib.id, f"m{seed}", n, seed + i), False, at)
            for i, n in enumerate(sizes)
        ]
        if touch_others and self.has_libraries():
            other = self.pick(index)
            changes.append(LibraryUpdated(replace(other, description="m"), ("description",), at))
        if touch_others and self.has_documents():
            other = self.pick(index, with_documents=True)
            doc = next(iter(self.model.documents[other.id].values()))
            changes.append(DocumentDeleted(other.id, doc.id, doc.title, at))
        if delete_it:
            changes.append(LibraryDeleted(lib.id, lib.name, at))
        self.write(changes)

    @rule()
    def snapshot(self) -> None:
        self.store.snapshot()

    @rule(cut=st.floats(0, 1), junk=st.binary(max_size=30), stray_snapshot=st.booleans())
    def crash(self, cut: float, junk: bytes, stray_snapshot: bool) -> None:
        newest = max(self.dir.glob("wal-*.log"))
        offset = int(cut * newest.stat().st_size)
        torn = newest.read_bytes()[:offset] + junk  # (junk may start with b"AWL1": still damage)
        self.store._abandon()
        newest.write_bytes(torn)
        if stray_snapshot:  # a snapshot the crash interrupted
            (self.dir / f"snapshot-{10**19:020d}.snap.tmp").write_bytes(b"AWS1 half")
        survived = 0
        for segment, end in self.records:
            if segment == newest.name and end > offset:
                break
            survived += 1
        event(f"crash kept {'all' if survived == len(self.records) else 'fewer'} records")
        self.model = self.history[survived]
        del self.history[survived + 1 :], self.records[survived:]
        self._store = self.open()

    @rule()
    def reopen(self) -> None:
        self.store.stop()
        self._store = self.open()

    @invariant()
    def equals_the_model(self) -> None:
        store, model = self.store, self.model
        statistics = store.statistics()
        assert statistics.last_seq == len(self.history) - 1
        assert store.head == statistics.position == model.position
        assert store.list_libraries() == list(model.libraries.values())
        for lib_id, docs in model.documents.items():
            assert listed(store, lib_id, 2) == list(docs)
            assert [view(d) for d in store.iter_documents(lib_id)] == [
                view(d) for d in docs.values()
            ]
        for gone in self.created - model.libraries.keys():
            assert store.list_documents(gone, 10, None).documents == []

    @invariant()
    def writes_are_checked_against_the_model(self) -> None:
        """The ordered state a write is built from equals the model (an empty write: it
        commits nothing, uses no position and writes no record)."""
        model = self.model

        def probe(head: Head) -> Sequence[Change]:
            for lib in model.libraries.values():
                assert head.library(lib.id) == lib
                assert head.library_named(lib.name) == lib
                for doc in model.documents[lib.id].values():
                    found = head.document(lib.id, doc.id)
                    assert found is not None
                    assert view(found) == view(doc)
            for gone in self.created - model.libraries.keys():
                assert head.library(gone) is None
            return []

        records = self.store.statistics().last_seq
        assert self.store.write(probe).wait() == Batch(model.position + 1, ())
        assert self.store.statistics().last_seq == records
        assert self.store.head == model.position

    @invariant()
    def replays_the_batches_committed(self) -> None:
        store, model = self.store, self.model
        try:
            start, replayed = 0, batches_from(store, 0)
        except HistoryLostError as lost:  # only retention drops segments
            start = lost.earliest - 1
            assert 0 < start < self.kept_from()
            replayed = batches_from(store, start)
        expected = [batch for batch in model.batches if batch.last > start]
        assert [batch_view(b) for b in replayed] == [batch_view(b) for b in expected]

    @invariant()
    def keeps_the_event_history(self) -> None:
        store, model = self.store, self.model
        earliest = store.earliest
        assert 1 <= earliest <= min(self.kept_from(), model.position + 1)
        if earliest > 1:
            with pytest.raises(HistoryLostError):
                store.events_after(0, 10, None, store.head)
        kept = model.events[earliest - 1 :]
        assert events_from(store, earliest - 1) == kept
        if model.libraries:  # one library's events: the records of others skipped unread
            lib_id = next(iter(model.libraries))
            mine = [e for e in kept if e.library_id == lib_id]
            assert events_from(store, earliest - 1, lib_id) == mine

    def teardown(self) -> None:
        if self._store is not None:
            self._store.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


TestDiskCrashes = DiskCrashMachine.TestCase
TestDiskCrashes.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
