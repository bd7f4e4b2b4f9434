"""Changes: what a committed write did, as values. The log is a sequence of them.

Every write builds its changes (``_rules``) and hands them to the store, which puts them in
order and gives each one its **position**: consecutive integers from 1, without gaps, in commit
order. Everything kept in memory (indexes, chunk references, library records, the event
history) is a projection of that sequence (``projection``), and the change event a subscriber
receives is a view of one change: its ``id`` is the change's position.

::

    Change                 event type                       what it carries
    LibraryCreated         library.created                  the new library's record
    LibraryUpdated         library.updated                  the record with its new fields, which
    LibraryDeleted         library.deleted                  the library's id and name
    DocumentSaved          document.added / .updated        the whole document: chunks with ids,
                                                            text, metadata and embeddings
    DocumentDeleted        document.deleted                 the document's id and title

A change says what happened, never what followed from it: a library's counts
(``document_count``, ``chunk_count``), its dimension once the first vectors arrive and its
``updated_at`` are derived by whoever applies the change (``library_after``), so every
projection derives them the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, ClassVar, Final

from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library


@dataclass(frozen=True, slots=True)
class LibraryCreated:
    kind: ClassVar[str] = "library.created"
    library: Library
    at: datetime

    @property
    def library_id(self) -> str:
        return self.library.id


@dataclass(frozen=True, slots=True)
class LibraryUpdated:
    kind: ClassVar[str] = "library.updated"
    #: the record as the update leaves it; only the fields named in ``changed`` are taken
    library: Library
    changed: tuple[str, ...]
    at: datetime

    @property
    def library_id(self) -> str:
        return self.library.id


@dataclass(frozen=True, slots=True)
class LibraryDeleted:
    kind: ClassVar[str] = "library.deleted"
    library_id: str
    name: str
    at: datetime


@dataclass(frozen=True, slots=True)
class DocumentSaved:
    """A document added (``replaced`` false) or replacing its earlier version. A version with
    the same chunk ids as the one it replaces changed only its title or metadata."""

    kind: ClassVar[str] = "document.saved"
    document: Document
    replaced: bool
    at: datetime

    @property
    def library_id(self) -> str:
        return self.document.library_id


@dataclass(frozen=True, slots=True)
class DocumentDeleted:
    kind: ClassVar[str] = "document.deleted"
    library_id: str
    document_id: str
    title: str
    at: datetime


Change = LibraryCreated | LibraryUpdated | LibraryDeleted | DocumentSaved | DocumentDeleted
#: What may change in a library's record after its creation.
LIBRARY_FIELDS: Final = ("name", "description", "metadata")


@dataclass(frozen=True, slots=True)
class WriteKey:
    """An idempotency key (a client's ``Idempotency-Key``) and the fingerprint of the request
    it came with: a write made again with the same key answers as the first one did."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Batch:
    """The changes of one commit, at the consecutive positions ``first``, ``first + 1``, ...

    A batch is applied as a whole: a bulk write becomes visible to searches all at once."""

    first: int
    changes: tuple[Change, ...]
    #: the idempotency key the write came with, if any (kept with the log)
    key: WriteKey | None = None
    #: the events, made once (``events()``): a store writes them and the projector publishes them
    _events: list[Event] | None = field(default=None, compare=False, repr=False)

    @property
    def last(self) -> int:
        """The position of the last change (``first - 1`` for a write that changed nothing)."""
        return self.first + len(self.changes) - 1

    def __len__(self) -> int:
        return len(self.changes)

    def positioned(self) -> Iterator[tuple[int, Change]]:
        return enumerate(self.changes, self.first)

    def events(self) -> list[Event]:
        """The change events of the batch (the same list each time: do not change it)."""
        events = self._events
        if events is None:
            events = [event_of(position, change) for position, change in self.positioned()]
            object.__setattr__(self, "_events", events)
        return events


def event_of(position: int, change: Change) -> Event:
    """The change event of ``change`` at ``position``: the envelope subscribers receive."""
    data: dict[str, Any]
    if isinstance(change, DocumentSaved):
        doc = change.document
        kind = "document.updated" if change.replaced else "document.added"
        data = {"document_id": doc.id, "title": doc.title, "num_chunks": doc.num_chunks}
    elif isinstance(change, DocumentDeleted):
        kind = change.kind
        data = {"document_id": change.document_id, "title": change.title}
    elif isinstance(change, LibraryCreated):
        kind = change.kind
        data = _library_data(change.library)
    elif isinstance(change, LibraryUpdated):
        kind = change.kind
        data = {**_library_data(change.library), "changed": sorted(change.changed)}
    else:
        kind = change.kind
        data = {"name": change.name}
    return Event(
        id=str(position), type=kind, library_id=change.library_id, data=data, timestamp=change.at
    )


def _library_data(library: Library) -> dict[str, Any]:
    return {
        "name": library.name,
        "dimension": library.dimension,
        "metric": library.metric,
        "index": library.index,
    }


class Tally:
    """The effect on one library's record of a run of its document changes, added up, then
    applied with one copy of the record (``applied_to``): the one derivation of counts,
    dimension and ``updated_at``, cheap enough for a bulk write of many documents."""

    __slots__ = ("at", "chunks", "dimension", "documents")

    def __init__(self, dimension: int | None = None) -> None:
        """``dimension``: the library's, when it has one already."""
        self.documents = 0
        self.chunks = 0
        self.dimension = dimension
        self.at: datetime | None = None

    def add(self, change: DocumentSaved | DocumentDeleted, previous_chunks: int | None) -> None:
        """Count ``change``; ``previous_chunks`` is the number of chunks of the document it
        saves or deletes, as it was before (``None``: it did not exist)."""
        if isinstance(change, DocumentSaved):
            doc = change.document
            if self.dimension is None:
                vector = next((c.embedding for c in doc.chunks if c.embedding is not None), None)
                self.dimension = None if vector is None else int(vector.shape[0])
            self.documents += previous_chunks is None
            self.chunks += len(doc.chunks) - (previous_chunks or 0)
        elif previous_chunks is not None:
            self.documents -= 1
            self.chunks -= previous_chunks
        else:
            return  # deleting what is not there changes nothing
        self.at = change.at

    def applied_to(self, library: Library) -> Library:
        if self.at is None:
            return library
        # Library(...) field by field: what dataclasses.replace gives, at a third of its cost
        # (a bulk write applies one per library, a small write one per store and projection)
        return Library(
            library.id,
            library.name,
            library.description,
            library.metadata,
            library.dimension if library.dimension is not None else self.dimension,
            library.metric,
            library.index,
            library.index_params,
            library.embedder,
            library.document_count + self.documents,
            library.chunk_count + self.chunks,
            library.created_at,
            self.at,
        )


_RECORD_FIELDS = (
    "id",
    "name",
    "description",
    "metadata",
    "dimension",
    "metric",
    "index",
    "index_params",
    "embedder",
    "document_count",
    "chunk_count",
    "created_at",
    "updated_at",
)
if tuple(f.name for f in fields(Library)) != _RECORD_FIELDS:  # Tally.applied_to lists them
    raise AssertionError("Library's fields have changed: update Tally.applied_to")


def library_after(library: Library, change: Change, previous_chunks: int | None) -> Library:
    """``library``'s record once ``change`` (one of its own) is applied. ``previous_chunks`` is
    the number of chunks of the document the change saves or deletes, as it was before
    (``None``: it did not exist). For a run of document changes, add them to a ``Tally``."""
    if isinstance(change, DocumentSaved | DocumentDeleted):
        tally = Tally(library.dimension)
        tally.add(change, previous_chunks)
        return tally.applied_to(library)
    if isinstance(change, LibraryUpdated):
        fields = {name: getattr(change.library, name) for name in change.changed}
        return replace(library, **fields, updated_at=change.at)
    if isinstance(change, LibraryCreated):
        return change.library
    return library


#: How long a write's idempotency key is remembered.
KEY_LIFETIME: Final = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a keyed write leaves to answer its retries: the key's fingerprint and the write's
    batch (its documents without their chunks: what a write answers with)."""

    fingerprint: str
    batch: Batch
    at: datetime

    @staticmethod
    def of(batch: Batch) -> Receipt:
        assert batch.key is not None
        changes = tuple(
            replace(c, document=replace(c.document, chunks=()))
            if isinstance(c, DocumentSaved) and c.document.chunks
            else c
            for c in batch.changes
        )
        return Receipt(batch.key.fingerprint, Batch(batch.first, changes), batch.changes[-1].at)
