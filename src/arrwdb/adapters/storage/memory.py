"""In-memory repository: the default for ``arrwdb.open()``; nothing survives the process.

Reads and writes are guarded by one lock held only for dictionary operations, so a reader sees
a write entirely or not at all. Documents are stored as the immutable values the service hands
in (embeddings are not copied). Events are not kept: the bus holds the history.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library, Page


class Done:
    """The ``Commit`` of a write that is complete when its call returns."""

    __slots__ = ()

    def wait(self) -> None:
        return None


DONE = Done()


class InMemoryRepository:
    """Implements ``arrwdb.domain.ports.Repository``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._libraries: dict[str, Library] = {}
        # library id -> {document id -> (insertion sequence, document)}
        self._documents: dict[str, dict[str, tuple[int, Document]]] = {}
        self._seq = 0

    def save_library(self, library: Library, event: Event | None) -> Done:
        with self._lock:
            self._libraries[library.id] = library
            self._documents.setdefault(library.id, {})
        return DONE

    def delete_library(self, library_id: str, event: Event) -> Done:
        with self._lock:
            self._libraries.pop(library_id, None)
            self._documents.pop(library_id, None)
        return DONE

    def get_library(self, library_id: str) -> Library | None:
        return self._libraries.get(library_id)

    def list_libraries(self) -> list[Library]:
        with self._lock:
            return list(self._libraries.values())

    def save_documents(
        self, library: Library, documents: Sequence[Document], events: Sequence[Event]
    ) -> Done:
        with self._lock:
            docs = self._documents.setdefault(library.id, {})
            for doc in documents:
                previous = docs.get(doc.id)
                if previous is None:
                    self._seq += 1
                    docs[doc.id] = (self._seq, doc)
                else:
                    docs[doc.id] = (previous[0], doc)
            self._libraries[library.id] = library
        return DONE

    def delete_document(self, library: Library, document_id: str, event: Event) -> Done:
        with self._lock:
            self._documents.get(library.id, {}).pop(document_id, None)
            self._libraries[library.id] = library
        return DONE

    def get_document(self, library_id: str, document_id: str) -> Document | None:
        entry = self._documents.get(library_id, {}).get(document_id)
        return None if entry is None else entry[1]

    def list_documents(self, library_id: str, limit: int, cursor: str | None) -> Page:
        after = _decode_cursor(cursor)
        with self._lock:
            entries = list(self._documents.get(library_id, {}).values())
        # dict order is insertion order, so sequences ascend; skip what the cursor passed
        start = 0
        if after:
            lo, hi = 0, len(entries)
            while lo < hi:
                mid = (lo + hi) // 2
                if entries[mid][0] <= after:
                    lo = mid + 1
                else:
                    hi = mid
            start = lo
        page = entries[start : start + limit]
        more = start + limit < len(entries)
        items = [_without_chunks(doc) for _, doc in page]
        return Page(items=items, next_cursor=str(page[-1][0]) if more and page else None)

    def entries(self, library_id: str) -> list[tuple[int, Document]]:
        """``(position, document)`` in insertion order: what a snapshot keeps."""
        with self._lock:
            return list(self._documents.get(library_id, {}).values())

    @property
    def position(self) -> int:
        """The last position handed out."""
        return self._seq

    def restore_entries(self, library: Library, entries: Sequence[tuple[int, Document]]) -> None:
        """Put back documents at the positions ``entries`` gives (ascending, after any this
        library holds), so that list cursors issued before a restart stay valid."""
        with self._lock:
            docs = self._documents.setdefault(library.id, {})
            for seq, doc in entries:
                docs[doc.id] = (seq, doc)
            self._libraries[library.id] = library
            self._seq = max(self._seq, entries[-1][0] if entries else 0)

    def continue_after(self, position: int) -> None:
        """Hand out positions after ``position`` from now on."""
        with self._lock:
            self._seq = max(self._seq, position)

    def iter_documents(self, library_id: str) -> Iterator[Document]:
        with self._lock:
            entries = list(self._documents.get(library_id, {}).values())
        for _, doc in entries:
            yield doc

    def recent_events(self, limit: int) -> list[Event]:
        return []

    def check(self) -> None:
        return None

    def close(self) -> None:
        return None


def _decode_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit():
        raise InvalidArgumentError(f"invalid cursor {cursor!r}", field="cursor")
    return int(cursor)


def _without_chunks(doc: Document) -> Document:
    from dataclasses import replace

    return replace(doc, chunks=()) if doc.chunks else doc
