"""Helpers of the disk store's tests (the crash state machine and the unit tests)."""

from __future__ import annotations

import numpy as np

from arrwdb.adapters.storage.disk import DiskStore
from arrwdb.domain.changes import (
    Batch,
    Change,
    DocumentSaved,
)
from arrwdb.domain.events import Event
from arrwdb.domain.models import Chunk, Document, new_id

DIM = 3
#: a history_size so large that the store keeps every event and every batch
KEEP_ALL = 10_000


def make_document(
    library_id: str, title: str, chunks: int, seed: int, doc_id: str = ""
) -> Document:
    rng = np.random.default_rng(seed)
    doc_id = doc_id or new_id()
    return Document(
        id=doc_id,
        library_id=library_id,
        title=title,
        metadata={"seed": seed, "mixed": [1, 2.5, None, True, "x"]},
        num_chunks=chunks,
        chunks=tuple(
            Chunk(
                id=new_id(),
                document_id=doc_id,
                position=i,
                text=f"{title} {i}",
                embedding=None if (seed + i) % 5 == 0 else rng.random(DIM, dtype=np.float32),
            )
            for i in range(chunks)
        ),
    )


def view(doc: Document) -> tuple[object, ...]:
    """A document as comparable values (numpy arrays do not compare with ``==``)."""
    chunks = tuple(
        (
            c.id,
            c.position,
            c.text,
            dict(c.metadata),
            None if c.embedding is None else c.embedding.tobytes(),
        )
        for c in doc.chunks
    )
    return (
        doc.id,
        doc.library_id,
        doc.title,
        dict(doc.metadata),
        doc.num_chunks,
        doc.created_at,
        doc.updated_at,
        chunks,
    )


def batch_view(batch: Batch) -> tuple[object, ...]:
    """A batch as comparable values: its position and its changes (documents by ``view``)."""
    changes = tuple(
        (DocumentSaved, view(c.document), c.replaced, c.at) if isinstance(c, DocumentSaved) else c
        for c in batch.changes
    )
    return (batch.first, changes)


def commit(store: DiskStore, *changes: Change) -> Batch:
    """One write of ``changes`` (whatever the head holds); its batch once durable."""
    return store.write(lambda head: changes).wait()


def events_from(
    store: DiskStore, after: int, library_id: str | None = None, page: int = 4
) -> list[Event]:
    """The event history after ``after`` read back from the log, ``page`` events at a time."""
    head, events = store.head, []
    while after < head:
        found, through = store.events_after(after, page, library_id, head)
        assert after < through <= head  # the read moved on
        events.extend(found)
        after = through
    return events


def batches_from(store: DiskStore, after: int, page: int = 4) -> list[Batch]:
    """The batches after ``after`` replayed from the log, about ``page`` changes at a time."""
    head, batches = store.head, []
    while after < head:
        found = store.read(after, page)
        assert found
        assert found[0].first <= after + 1 <= found[0].last  # whole batches, from the one due
        batches.extend(found)
        after = found[-1].last
    return batches


def listed(store: DiskStore, library_id: str, limit: int) -> list[str]:
    """Every document id of a library, page by page through the cursors."""
    ids: list[str] = []
    cursor = None
    while True:
        page = store.list_documents(library_id, limit, cursor)
        ids.extend(d.id for d in page.documents)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
