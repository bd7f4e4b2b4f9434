"""The catalog: libraries and their documents as a sequence of changes leaves them.

A store keeps its tables as a ``Catalog`` (the memory and disk stores: one for the state every
*ordered* write leaves, which writes are checked against, and one for the *durable* state that
reads see). It is a plain projection of the log: ``apply`` takes batches in position order and
nothing else changes it. It does no locking; its owner does.

Each document keeps the position of the change that first added it: listing pages go by it
(``Page.next_cursor``), so a cursor stays valid across restarts, and a replaced document keeps
its place in the listing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace

from arrwdb.domain.changes import (
    KEY_LIFETIME,
    Batch,
    DocumentDeleted,
    DocumentSaved,
    LibraryCreated,
    LibraryDeleted,
    LibraryUpdated,
    Receipt,
    Tally,
    library_after,
)
from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.filters import Predicate
from arrwdb.domain.models import Document, Library, Page

#: ``(list position, document with its chunks)``
Entry = tuple[int, Document]


class Catalog:
    """Implements ``ports.Head`` (what a write is checked against) and the reads of a store."""

    def __init__(self) -> None:
        #: the position of the last change applied
        self.position = 0
        self._libraries: dict[str, Library] = {}
        self._names: dict[str, str] = {}
        self._documents: dict[str, dict[str, Entry]] = {}
        #: idempotency key -> what its write left (oldest first; younger than KEY_LIFETIME)
        self._receipts: dict[str, Receipt] = {}

    # -- reads ------------------------------------------------------------------------------

    def library(self, library_id: str) -> Library | None:
        return self._libraries.get(library_id)

    def library_count(self) -> int:
        return len(self._libraries)

    def library_named(self, name: str) -> Library | None:
        library_id = self._names.get(name)
        return None if library_id is None else self._libraries.get(library_id)

    def document(self, library_id: str, document_id: str) -> Document | None:
        entry = self._documents.get(library_id, {}).get(document_id)
        return None if entry is None else entry[1]

    def entry(self, library_id: str, document_id: str) -> Entry | None:
        """A document with its list position."""
        return self._documents.get(library_id, {}).get(document_id)

    def receipt(self, key: str) -> Receipt | None:
        """What the write made with idempotency key ``key`` left, if it is remembered."""
        receipt = self._receipts.get(key)
        if receipt is None or receipt.at.timestamp() < time.time() - KEY_LIFETIME:
            return None
        return receipt

    def receipts(self) -> list[tuple[str, Receipt]]:
        """The remembered keys, oldest first."""
        return list(self._receipts.items())

    def libraries(self) -> list[Library]:
        """In creation order."""
        return list(self._libraries.values())

    def entries(self, library_id: str) -> list[Entry]:
        """A library's documents with their list positions, in listing order."""
        return list(self._documents.get(library_id, {}).values())

    def documents(self, library_id: str) -> Iterator[Document]:
        """A library's documents (with their chunks), in listing order."""
        for _, doc in self._documents.get(library_id, {}).values():
            yield doc

    def page(
        self, library_id: str, limit: int, cursor: str | None, where: Predicate | None = None
    ) -> Page:
        """Documents (without chunks) after ``cursor`` in listing order (those whose metadata
        ``where`` matches). Raises ``InvalidArgumentError`` for a cursor this catalog did not
        issue."""
        return page_of(self.entries(library_id), limit, cursor, where)

    # -- changes ----------------------------------------------------------------------------

    def apply(self, batch: Batch) -> None:
        """Apply the next batch (``batch.first`` follows ``position``)."""
        if batch.first != self.position + 1:
            raise ValueError(f"batch at {batch.first} does not follow position {self.position}")
        tallies: dict[str, Tally] = {}  # the document changes of each library, added up
        for position, change in batch.positioned():
            if isinstance(change, DocumentSaved):
                doc = change.document
                docs = self._documents.setdefault(doc.library_id, {})
                previous = docs.get(doc.id)
                docs[doc.id] = (position if previous is None else previous[0], doc)
                tally = tallies.get(doc.library_id) or self._tally(tallies, doc.library_id)
                tally.add(change, None if previous is None else len(previous[1].chunks))
                continue
            if isinstance(change, DocumentDeleted):
                removed = self._documents.get(change.library_id, {}).pop(change.document_id, None)
                tally = tallies.get(change.library_id) or self._tally(tallies, change.library_id)
                tally.add(change, None if removed is None else len(removed[1].chunks))
                continue
            self._settle(tallies, change.library_id)
            if isinstance(change, LibraryCreated):
                library = change.library
                self._libraries[library.id] = library
                self._names[library.name] = library.id
                self._documents.setdefault(library.id, {})
            elif isinstance(change, LibraryUpdated):
                old = self._libraries.get(change.library_id)
                if old is not None:
                    new = library_after(old, change, None)
                    if new.name != old.name:
                        self._names.pop(old.name, None)
                        self._names[new.name] = new.id
                    self._libraries[new.id] = new
            elif isinstance(change, LibraryDeleted):
                old = self._libraries.pop(change.library_id, None)
                self._documents.pop(change.library_id, None)
                if old is not None and self._names.get(old.name) == old.id:
                    del self._names[old.name]
        for library_id in list(tallies):
            self._settle(tallies, library_id)
        self.position = batch.last
        if batch.key is not None:
            self.remember(batch.key.key, Receipt.of(batch))

    def remember(self, key: str, receipt: Receipt) -> None:
        """Keep a key's receipt (and forget the ones older than ``KEY_LIFETIME``)."""
        receipts = self._receipts
        receipts.pop(key, None)
        receipts[key] = receipt
        horizon = time.time() - KEY_LIFETIME
        while receipts:
            oldest = next(iter(receipts))
            if receipts[oldest].at.timestamp() >= horizon:
                break
            del receipts[oldest]

    def _tally(self, tallies: dict[str, Tally], library_id: str) -> Tally:
        library = self._libraries.get(library_id)
        tally = tallies[library_id] = Tally(None if library is None else library.dimension)
        return tally

    def _settle(self, tallies: dict[str, Tally], library_id: str) -> None:
        """Apply a library's added-up document changes to its record."""
        tally = tallies.pop(library_id, None)
        library = self._libraries.get(library_id)
        if tally is not None and library is not None:
            self._libraries[library_id] = tally.applied_to(library)

    def restore(
        self, position: int, libraries: Sequence[Library], entries: Mapping[str, Iterable[Entry]]
    ) -> None:
        """Fill an empty catalog with the state after ``position`` (a snapshot's)."""
        if self.position or self._libraries:
            raise ValueError("restore() fills an empty catalog")
        for library in libraries:
            self._libraries[library.id] = library
            self._names[library.name] = library.id
            self._documents[library.id] = {
                doc.id: (at, doc) for at, doc in entries.get(library.id, ())
            }
        self.position = position

    def copy(self) -> Catalog:
        """An independent catalog in the same state (the documents themselves are shared:
        they are immutable)."""
        twin = Catalog()
        twin.position = self.position
        twin._libraries = dict(self._libraries)
        twin._names = dict(self._names)
        twin._documents = {lib: dict(docs) for lib, docs in self._documents.items()}
        twin._receipts = dict(self._receipts)
        return twin


def page_of(
    entries: Sequence[Entry], limit: int, cursor: str | None, where: Predicate | None = None
) -> Page:
    """The page of ``entries`` (a library's, in listing order) after ``cursor``: at most
    ``limit`` documents, without chunks, whose metadata ``where`` matches (``None``: all).
    ``next_cursor`` is ``None`` when no later entry matches."""
    after = _decode_cursor(cursor)
    lo, hi = 0, len(entries)
    while lo < hi:  # the first entry listed after the cursor (positions ascend)
        mid = (lo + hi) // 2
        if entries[mid][0] <= after:
            lo = mid + 1
        else:
            hi = mid
    if where is None:
        page = entries[lo : lo + limit]
        more = lo + limit < len(entries)
    else:
        page = []
        more = False
        for entry in itertools.islice(entries, lo, None):
            if where(entry[1].metadata):
                if len(page) == limit:
                    more = True
                    break
                page.append(entry)
    documents = [replace(doc, chunks=()) if doc.chunks else doc for _, doc in page]
    return Page(documents=documents, next_cursor=str(page[-1][0]) if more and page else None)


def count_of(entries: Iterable[Entry], where: Predicate) -> int:
    """How many of ``entries`` have metadata that ``where`` matches."""
    return sum(1 for _, doc in entries if where(doc.metadata))


def _decode_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not (len(cursor) <= 20 and cursor.isascii() and cursor.isdigit()):
        raise InvalidArgumentError(f"invalid cursor {cursor[:40]!r}", field="cursor")
    return int(cursor)
