"""The change stream through the library API: positions are event ids, one reset shape, and a
reader that keeps reading is never cut off for somebody else's burst (nor for its own, over a
durable store)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import arrwdb
from arrwdb.domain.errors import SlowConsumerError

DIM = 4


def docs(count: int, tag: str) -> list[dict[str, Any]]:
    vectors = np.random.default_rng(len(tag) + count).standard_normal((count, DIM))
    return [
        {
            "title": f"{tag}-{i}",
            "chunks": [{"text": tag, "embedding": vectors[i].astype(np.float32)}],
        }
        for i in range(count)
    ]


class Reader(threading.Thread):
    """Reads a stream in a thread, as a consumer would, until it has ``want`` events."""

    def __init__(self, stream: arrwdb.EventStream, want: int) -> None:
        super().__init__(daemon=True)
        self.stream, self.want = stream, want
        self.events: list[arrwdb.Event] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
                if len(self.events) == self.want:
                    return
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_one_bulk_write_to_another_library_cuts_no_subscriber() -> None:
    """Before: a single add_documents of more than ~1,000 documents to library B closed every
    idle subscriber of library A with SlowConsumerError, even one filtered by type."""
    with arrwdb.open() as db:
        a = db.create_library("a", index="flat", dimension=DIM)
        b = db.create_library("b", index="flat", dimension=DIM)
        plain = a.events(timeout=5)
        typed = db.events(types=["document.deleted"], timeout=5)
        everything = db.events(timeout=5)
        b.add_documents(docs(3_000, "b"))  # 3x the old per-subscriber buffer
        doc = a.add_document(title="after", chunks=[{"text": "x", "embedding": [1, 0, 0, 0]}])
        assert next(iter(plain)).data["document_id"] == doc.id
        a.delete_document(doc.id)
        deleted = next(iter(typed))
        assert (deleted.type, deleted.data["document_id"]) == ("document.deleted", doc.id)
        assert len([e for _, e in zip(range(3_001), everything, strict=False)]) == 3_001


def test_a_reader_keeps_reading_through_bulk_writes_over_a_durable_store(
    tmp_path: Path,
) -> None:
    """History of 10,000 events, disk store: 50,000 documents to B in one call, then 20,000 to
    A in one call. A subscriber of A that keeps reading is never cut, and receives exactly A's
    20,000 events, in order (the first ones read back from the log: they left the memory)."""
    with arrwdb.open(str(tmp_path / "data"), history_size=10_000, fsync="never") as db:
        a = db.create_library("a", index="flat", dimension=DIM)
        b = db.create_library("b", index="flat", dimension=DIM)
        reader = Reader(a.events(timeout=60), want=20_000)
        reader.start()
        b.add_documents(docs(50_000, "b"))
        added = a.add_documents(docs(20_000, "a"))
        reader.join(timeout=120)
        assert reader.error is None, repr(reader.error)
        assert [e.data["document_id"] for e in reader.events] == [d.id for d in added]
        ids = [int(e.id) for e in reader.events]
        assert ids == list(range(ids[0], ids[0] + 20_000))
        assert all(e.type == "document.added" and e.library_id == a.id for e in reader.events)


def test_over_the_memory_store_a_reader_whose_own_events_were_evicted_is_cut_explicitly() -> None:
    """Without a log behind the memory, a commit of its own events larger than the history
    cuts a reader: with ``slow_consumer`` and the last id it was given, never with a gap."""
    with arrwdb.open(history_size=100) as db:
        a = db.create_library("a", index="flat", dimension=DIM)
        stream = a.events(timeout=1)
        first = a.add_document(title="one", chunks=[{"text": "x", "embedding": [1, 0, 0, 0]}])
        event = next(iter(stream))
        assert event.data["document_id"] == first.id
        a.add_documents(docs(500, "a"))
        with pytest.raises(SlowConsumerError) as info:
            next(iter(stream))
        assert info.value.code == "slow_consumer"
        assert info.value.details["last_event_id"] == event.id


def test_the_reset_is_one_event_with_a_real_id_that_never_replays() -> None:
    """Before: the in-process stream.reset had id "0" and no library, and resuming from it
    replayed the whole retained history."""
    with arrwdb.open(history_size=10) as db:
        lib = db.create_library("reset", index="flat", dimension=DIM)
        lib.add_documents(docs(30, "x"))
        head = db.service.last_event_id
        stream = lib.events(since="3", timeout=0.2)
        reset = next(iter(stream))
        assert (reset.type, reset.id, reset.library_id) == ("stream.reset", str(head), lib.id)
        assert dict(reset.data) == {
            "reason": "history_lost",
            "requested": "3",
            "earliest": str(head - 9),
            "resume_from": str(head),
        }
        assert list(stream) == []  # live after it
        new = lib.add_document(title="new", chunks=[{"text": "n", "embedding": [0, 1, 0, 0]}])
        resumed = list(lib.events(since=reset.id, timeout=0.2))
        assert [e.data["document_id"] for e in resumed] == [new.id]  # nothing replayed


def test_event_ids_are_the_positions_of_the_changes(tmp_path: Path) -> None:
    """Consecutive integers from 1, without gaps, in commit order, across a restart."""
    path = str(tmp_path / "data")
    with arrwdb.open(path) as db:
        lib = db.create_library("ids", index="flat", dimension=DIM)
        lib.add_documents(docs(3, "x"))
        doc = lib.add_document(title="t", chunks=[{"text": "t", "embedding": [1, 0, 0, 0]}])
        lib.update_document(doc.id, title="t2")
        lib.delete_document(doc.id)
    with arrwdb.open(path) as db:
        lib = db.get_library("ids")
        lib.update(description="again")
        events = list(lib.events(since="earliest", timeout=0.2))
    assert [e.id for e in events] == [str(i) for i in range(1, 9)]
    assert [e.type for e in events] == [
        "library.created",
        *["document.added"] * 4,
        "document.updated",
        "document.deleted",
        "library.updated",
    ]
