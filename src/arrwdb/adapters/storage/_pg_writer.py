"""The PostgreSQL store's writes: ordered by the database, checked against the ordered state,
committed together (group commit).

A transaction first locks the single ``head`` row and holds it to its commit, so every server's
writes take consecutive positions in commit order. Holding it, the writer brings ``head`` (the
state every ordered write leaves) up to the database's head with what other servers committed,
then runs each write's rule against it. Concurrent writes of one server share the transaction:
the first opens it, those that arrive while it is open join it, and the first to wait commits
it for all, in one pipelined round trip ending in ``COMMIT``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from arrwdb.adapters.storage._pg_connections import Connections, masked
from arrwdb.adapters.storage._pg_log import change_rows, table_rows
from arrwdb.adapters.storage._pg_schema import Statements
from arrwdb.adapters.storage.memory import Done
from arrwdb.domain.catalog import Catalog
from arrwdb.domain.changes import Batch, WriteKey
from arrwdb.domain.errors import IdempotencyMismatchError, StorageError
from arrwdb.domain.ports import Build

#: A transaction adding at least this many documents copies them in (``COPY``) rather than
#: inserting them one statement each.
COPY_FROM = 64
#: How long (s) a commit waits at most for the writers queued behind it to join it.
JOIN_WAIT = 0.002


@dataclass(eq=False)
class _Transaction:
    """One open transaction, holding the database's head row, and the writes in it."""

    conn: psycopg.Connection[Any]
    #: batches other servers committed, read when it opened (applied to ``head`` already)
    caught_up: list[Batch]
    batches: list[Batch] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ended: bool = False
    error: StorageError | None = None


class Writer:
    """Orders, checks and commits the writes of one store."""

    def __init__(
        self,
        connections: Connections,
        sql: Statements,
        *,
        notify: bool,
        visible: Callable[[], Catalog],
        between: Callable[[psycopg.Connection[Any], int, int], list[Batch]],
        publish: Callable[[Sequence[Batch]], None],
        saw_head: Callable[[int], None],
    ) -> None:
        self._connections = connections
        self._sql = sql
        self._notify = notify
        self._visible = visible  # a copy of the committed state (to start again from)
        self._between = between  # the committed batches in (after, through]
        self._publish = publish  # makes committed batches visible, in order
        self._saw_head = saw_head
        self.head = visible()  # the state every ordered write leaves
        self._head_stale = False  # a transaction failed: start again from the visible state
        self._order = threading.Lock()  # writes are put in order under it
        self._tx: _Transaction | None = None  # the open transaction writes join
        self._arriving = threading.Lock()
        self._waiting = 0  # writers waiting for _order (they may join the open transaction)
        self._writing = threading.Lock()  # held from a transaction's start to its end
        self._closed = False

    def write(self, build: Build, key: WriteKey | None = None) -> PostgresCommit | Done:
        """``ports.ChangeLog.write``: join the open transaction, or open one (which waits for
        the database's head row)."""
        with self._arriving:
            self._waiting += 1
        try:
            self._order.acquire()
        finally:
            with self._arriving:
                self._waiting -= 1
        try:
            return self._ordered(build, key)
        finally:
            self._order.release()

    def _ordered(self, build: Build, key: WriteKey | None) -> PostgresCommit | Done:
        """(Caller holds ``_order``.)"""
        if self._closed:
            raise StorageError(f"the store at {masked(self._connections.url)} is not open")
        tx = self._tx
        if tx is None:
            tx = self._tx = self._begin()
        try:
            if key is not None:
                repeated = self._repeated(tx, key)
                if repeated is not None:
                    return repeated
            batch = Batch(self.head.position + 1, tuple(build(self.head)), key)
        except BaseException:
            if not tx.batches:
                self._abandon(tx)
            raise
        if not batch.changes:
            if not tx.batches:
                self._abandon(tx)
            return Done(batch)
        self.head.apply(batch)
        tx.batches.append(batch)
        return PostgresCommit(self, tx, batch)

    def _repeated(self, tx: _Transaction, key: WriteKey) -> PostgresCommit | Done | None:
        """(Caller holds ``_order`` and the head row.) The answer to a write made again with
        ``key``, on any server: the first one's receipt, once that one is committed."""
        receipt = self.head.receipt(key.key)
        if receipt is None:
            return None
        if receipt.fingerprint != key.fingerprint:
            raise IdempotencyMismatchError(key.key)
        if any(b.first == receipt.batch.first for b in tx.batches):  # in this transaction
            return PostgresCommit(self, tx, receipt.batch)
        if not tx.batches:
            self._abandon(tx)
        return Done(receipt.batch)

    def _begin(self) -> _Transaction:
        """(Caller holds ``_order``.) Open a transaction holding the head row, with ``head``
        brought up to the database's head."""
        self._writing.acquire()  # the previous transaction has ended
        connections = self._connections
        try:
            conn = connections.writer()
            if self._head_stale:
                self.head = self._visible()
                self._head_stale = False
            with conn.cursor() as cur:
                with conn.pipeline():
                    cur.execute("BEGIN")
                    cur.execute(self._sql.lock_head)
                row = cur.fetchone()
            last = int(row[0]) if row else 0
            if last < self.head.position:
                raise StorageError(
                    f"the database at {masked(connections.url)} is at position {last}, behind "
                    f"this server ({self.head.position}): was it restored from a backup? "
                    "Restart the server"
                )
            caught_up = self._between(conn, self.head.position, last)
            for batch in caught_up:
                self.head.apply(batch)
            self._saw_head(last)
            return _Transaction(conn, caught_up)
        except BaseException as exc:
            self._head_stale = True
            connections.drop_writer()
            self._writing.release()
            if isinstance(exc, psycopg.Error):
                raise connections.unavailable("could not start a write", exc) from None
            raise

    def _abandon(self, tx: _Transaction) -> None:
        """(Caller holds ``_order``.) End an open transaction that holds no write."""
        self._tx = None
        try:
            tx.conn.execute("ROLLBACK")
        except psycopg.Error:
            self._connections.drop_writer()
        finally:
            tx.ended = True
            self._writing.release()
        self._publish(tx.caught_up)

    def finish(self, tx: _Transaction, batch: Batch) -> Batch:
        """Commit the transaction (the first writer to wait does it for all of them) and make
        it visible."""
        with tx.lock:
            if not tx.ended:
                # let the writers already waiting for the order join this transaction
                deadline = time.monotonic() + JOIN_WAIT
                while self._waiting and time.monotonic() < deadline:
                    time.sleep(0)
                with self._order:
                    if self._tx is tx:
                        self._tx = None  # later writes open the next one
                self._commit(tx)
                tx.ended = True
        if tx.error is not None:
            raise tx.error
        return batch

    def _commit(self, tx: _Transaction) -> None:
        try:
            try:
                self._send(tx)
            except psycopg.Error as exc:
                self._head_stale = True
                self._connections.drop_writer()
                tx.error = self._connections.unavailable("could not commit a write", exc)
            except BaseException:
                self._head_stale = True
                self._connections.drop_writer()
                raise
        finally:
            self._writing.release()
        if tx.error is None:
            self._saw_head(tx.batches[-1].last)
            self._publish([*tx.caught_up, *tx.batches])
        else:
            self._publish(tx.caught_up)  # committed by others: they stand

    def _send(self, tx: _Transaction) -> None:
        """The changes rows, the tables, the new head and a notification, then ``COMMIT``.
        (``head`` holds the state after the transaction: no write joins it any more.)"""
        sql, conn = self._sql, tx.conn
        changes, saved = change_rows(tx.batches)
        rows = table_rows(self.head, tx.batches, saved)
        last = tx.batches[-1].last
        with conn.cursor() as cur:
            if len(rows.added) >= COPY_FROM:  # (the key to the library is checked at commit:
                with cur.copy(sql.copy_documents) as copy:  # the library's row follows)
                    copy.set_types(["text", "text", "int8", "text", "bytea"])
                    for row in rows.added:
                        copy.write_row(row)
                rows.added.clear()
            with conn.pipeline():
                cur.executemany(sql.insert_change, changes)
                cur.executemany(sql.upsert_library, rows.libraries)
                if rows.deleted:
                    cur.executemany(sql.delete_document, rows.deleted)
                if rows.saved or rows.added:
                    cur.executemany(sql.upsert_document, [*rows.added, *rows.saved])
                if rows.gone:
                    cur.executemany(sql.delete_library, rows.gone)
                if rows.keys:
                    cur.executemany(sql.upsert_key, rows.keys)
                cur.execute(sql.set_head, (last,))
                if self._notify:
                    cur.execute("SELECT pg_notify(%s, %s)", (sql.channel, str(last)))
                cur.execute("COMMIT")

    def close(self) -> None:
        """Refuse later writes, end an open transaction without writes, wait for the one
        committing, and let go of the connection of writes."""
        with self._order:
            self._closed = True
            tx = self._tx
            if tx is not None and not tx.batches:
                self._abandon(tx)
        with self._writing:
            self._connections.drop_writer()


class PostgresCommit:
    """The ``Commit`` of a write in an open transaction: committed, with the writes that
    joined it, by the first of them to wait."""

    __slots__ = ("_batch", "_tx", "_writer")

    def __init__(self, writer: Writer, tx: _Transaction, batch: Batch) -> None:
        self._writer = writer
        self._tx = tx
        self._batch = batch

    def wait(self) -> Batch:
        return self._writer.finish(self._tx, self._batch)
