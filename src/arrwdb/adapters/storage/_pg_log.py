"""The PostgreSQL store's log and tables as rows: what a transaction writes, and reading the
``changes`` rows back (batches for the projector and for catching up, events for the change
stream). Each function takes a connection and the schema's ``Statements``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from arrwdb.adapters.storage._codec import (
    decode_changes,
    decode_event_list,
    decode_receipt,
    encode_changes_sharing,
    encode_events,
    encode_library,
    encode_receipt,
)
from arrwdb.adapters.storage._pg_schema import Statements
from arrwdb.adapters.storage._records import take_events
from arrwdb.domain.catalog import Catalog
from arrwdb.domain.changes import (
    KEY_LIFETIME,
    Batch,
    DocumentDeleted,
    DocumentSaved,
    LibraryCreated,
    Receipt,
)
from arrwdb.domain.errors import HistoryLostError, StorageError
from arrwdb.domain.events import Event

#: Rows of the log read at a time.
ROWS_PER_READ = 64

ChangeRow = tuple[int, int, str, float, bytes, bytes]


def change_rows(batches: Sequence[Batch]) -> tuple[list[ChangeRow], dict[tuple[str, str], bytes]]:
    """The ``changes`` rows of batches (first, last, their one library or "", time, events,
    changes), and each saved document's encoded change (the ``documents`` table keeps the
    same bytes: a document is encoded once)."""
    rows: list[ChangeRow] = []
    saved: dict[tuple[str, str], bytes] = {}
    for batch in batches:
        changes = batch.changes
        library = changes[0].library_id
        if any(change.library_id != library for change in changes):
            library = ""
        body, documents = encode_changes_sharing(batch)
        saved.update(documents)
        at = changes[-1].at.timestamp()
        rows.append((batch.first, batch.last, library, at, encode_events(batch), body))
    return rows, saved


@dataclass
class TableRows:
    """What one transaction writes to the tables (see ``_pg_schema``)."""

    libraries: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    gone: list[tuple[str]] = field(default_factory=list)
    #: documents only added (no other change of them): copied in bulk when there are many
    added: list[tuple[str, str, int, str, bytes]] = field(default_factory=list)
    saved: list[tuple[str, str, int, str, bytes]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)
    #: idempotency keys of the writes: key, time, receipt
    keys: list[tuple[str, float, bytes]] = field(default_factory=list)


def table_rows(
    head: Catalog, batches: Sequence[Batch], saved: Mapping[tuple[str, str], bytes]
) -> TableRows:
    """The rows that bring the tables to the state after ``batches``, as ``head`` (the
    catalog that applied them) holds it: each library and document they touched, once (a
    document as ``saved`` holds its last change: ``change_rows``)."""
    rows = TableRows()
    created: dict[str, int] = {}
    libraries: dict[str, None] = {}
    documents: dict[tuple[str, str], bool] = {}  # -> only added in these batches
    for batch in batches:
        if batch.key is not None:
            receipt = Receipt.of(batch)
            encoded = encode_receipt(batch.key.key, receipt)
            rows.keys.append((batch.key.key, receipt.at.timestamp(), encoded))
        for position, change in batch.positioned():
            libraries[change.library_id] = None
            if isinstance(change, LibraryCreated):
                created[change.library_id] = position
            elif isinstance(change, DocumentSaved):
                key = (change.library_id, change.document.id)
                documents[key] = key not in documents and not change.replaced
            elif isinstance(change, DocumentDeleted):
                documents[(change.library_id, change.document_id)] = False
    for library_id in libraries:
        lib = head.library(library_id)
        if lib is None:
            rows.gone.append((library_id,))
        else:
            rows.libraries.append((lib.id, lib.name, created.get(lib.id, 0), encode_library(lib)))
    for (library_id, document_id), added in documents.items():
        if head.library(library_id) is None:
            continue  # deleted with its library
        entry = head.entry(library_id, document_id)
        if entry is None:
            rows.deleted.append((library_id, document_id))
            continue
        at, doc = entry
        row = (library_id, document_id, at, doc.title, saved[(library_id, document_id)])
        (rows.added if added else rows.saved).append(row)
    return rows


def read_batches(conn: Any, sql: Statements, after: int, through: int, limit: int) -> list[Batch]:
    """Whole batches in ``(after, through]`` from the log, about ``limit`` changes (at least
    one). Raises ``HistoryLostError`` when the ones right after ``after`` are pruned."""
    out: list[Batch] = []
    count = 0
    rows = (
        conn.cursor(binary=True)
        .execute(sql.batches_after, (after, through, ROWS_PER_READ))
        .fetchall()
    )
    expected = after + 1
    for first, last, body in rows:
        if first != expected:
            if not out:
                raise HistoryLostError(after, int(first))
            break
        if out and count + (last - first + 1) > limit:
            break
        try:
            batch = decode_changes(int(first), int(last - first + 1), body)
        except ValueError as exc:
            raise StorageError(f"unreadable change log row at position {first}: {exc}") from None
        out.append(batch)
        count += len(batch)
        expected = batch.last + 1
    if not out and after < through:
        raise HistoryLostError(after, earliest(conn, sql, None) or through + 1)
    return out


def earliest(conn: Any, sql: Statements, max_age: float | None) -> int | None:
    """The first position still in the log (younger than ``max_age`` seconds), if any."""
    if max_age is None:
        row = conn.execute(sql.earliest).fetchone()
    else:
        row = conn.execute(sql.earliest_since, (time.time() - max_age,)).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def events_after(
    conn: Any, sql: Statements, after: int, limit: int, library_id: str | None, until: int
) -> tuple[list[Event], int]:
    """``ports.EventHistory.events_after`` over the rows of the log (the rows of other
    libraries are skipped without reading their events)."""
    found: list[Event] = []
    through = after
    while through < until:
        rows = (
            conn.cursor(binary=True)
            .execute(sql.events_after, (library_id, library_id, through, until, ROWS_PER_READ))
            .fetchall()
        )
        if not rows:
            break
        for first, last, _, events in rows:
            if first > through + 1:
                raise HistoryLostError(through, int(first))
            if events is None:  # all of another library
                through = min(int(last), until)
                continue
            try:
                decoded = decode_event_list(events)
            except ValueError as exc:
                raise StorageError(f"unreadable events at position {first}: {exc}") from None
            through, full = take_events(decoded, through, until, library_id, found, limit)
            if full:
                return found, through
    return found, through


def prune(conn: Any, sql: Statements, head: int, history_size: int, max_age: float | None) -> None:
    """Delete the rows before the last ``history_size`` positions up to ``head`` (and those
    older than ``max_age`` seconds; the newest row always stays), and the idempotency keys
    older than ``KEY_LIFETIME``."""
    conn.execute(sql.prune_before, (head - history_size + 1,))
    if max_age is not None:
        conn.execute(sql.prune_older, (time.time() - max_age, head))
    conn.execute(sql.prune_keys, (time.time() - KEY_LIFETIME,))


def load_receipts(conn: Any, sql: Statements) -> list[tuple[str, Receipt]]:
    """The idempotency keys younger than ``KEY_LIFETIME``, oldest first."""
    rows = conn.cursor(binary=True).execute(sql.load_keys, (time.time() - KEY_LIFETIME,))
    out: list[tuple[str, Receipt]] = []
    for (data,) in rows:
        try:
            out.append(decode_receipt(data))
        except ValueError as exc:
            raise StorageError(f"unreadable idempotency key row: {exc}") from None
    return out
