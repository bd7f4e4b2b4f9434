"""The PostgreSQL store: one dataset and one change log shared by several servers.

Needs the ``postgres`` extra (``pip install 'arrwdb[postgres]'``: psycopg 3 and psycopg-pool).
The tables are described in ``_pg_schema``; this module is how a server writes and follows them.

Writes
------
The database orders writes: a transaction first locks the single ``head`` row (``SELECT ...
FOR UPDATE``) and holds it to its commit, so every server's writes take consecutive positions,
gap-free, in commit order. With the lock held, the server brings ``_head`` (its copy of the
state every ordered write leaves) up to the database's head by reading the changes other
servers committed, then runs each write's rule against it, exactly as the memory and disk
stores do: a library name is unique, a document id is not taken, a PATCH reads the version it
replaces, across all servers. The tables' constraints back this up.

Concurrent writes of one server share one transaction (group commit): the first writer opens
it, the ones that arrive while it is open join it, and the first to wait commits it for all
(the changes rows, the tables, the head, a notification), in one pipelined round trip. A write
is acknowledged once committed and applied to ``_visible``, the state reads are served from.

Following
---------
Changes committed by other servers reach ``_visible`` when someone waits for them
(``wait_for``: the domain's ``Follower``): it reads the rows after its position, woken by
``LISTEN``/``NOTIFY`` (a wake-up only: notifications may be lost) with a poll every
``poll_interval`` seconds as the backstop. A lost connection is retried at each poll.

The change stream reads the ``changes`` rows back (``EventHistory``); they are pruned in the
background to about the last ``history_size`` positions (and to ``history_max_age`` seconds).

Failures
--------
A transaction that fails (the database is unreachable, a constraint refuses it) fails every
write in it with ``StorageError``; nothing of them is visible, and later writes go on once the
database answers again. If the connection is lost during the commit itself, the outcome is
unknown to the writer: the write may be committed (it then appears, as every change does, by
following the log). Reads go on from memory while the database is down (possibly stale).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import psycopg
    from psycopg import conninfo
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "PostgreSQL storage needs the postgres extra: pip install 'arrwdb[postgres]'"
    ) from exc

from arrwdb.adapters.storage._codec import (
    decode_changes,
    decode_document,
    decode_event_list,
    decode_library,
    encode_changes,
    encode_document,
    encode_events,
    encode_library,
)
from arrwdb.adapters.storage._pg_schema import SchemaError, Statements, ensure_schema
from arrwdb.adapters.storage.memory import Done
from arrwdb.domain.catalog import Catalog, Entry
from arrwdb.domain.changes import Batch, DocumentDeleted, DocumentSaved, LibraryCreated
from arrwdb.domain.errors import HistoryLostError, StorageError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library, Page
from arrwdb.domain.ports import Build

logger = logging.getLogger("arrwdb.storage")

#: Recent batches kept in memory for the projector and the next write's catch-up.
TAIL_BATCHES = 64
#: A transaction adding at least this many documents copies them in (``COPY``) rather than
#: inserting them one statement each.
COPY_FROM = 64
#: How long (s) a commit waits at most for the writers queued behind it to join it.
JOIN_WAIT = 0.002
#: Rows of the log read at a time.
ROWS_PER_READ = 64


def masked(url: str) -> str:
    """``url`` with its password hidden (for messages)."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable PostgreSQL URL>"
    if "password" in params:
        params["password"] = "***"
    host = params.get("host", "")
    port = params.get("port", "")
    user = params.get("user", "")
    db = params.get("dbname", "")
    secret = ":***" if "password" in params else ""
    return f"postgresql://{user}{secret}@{host}{':' if port else ''}{port}/{db}"


@dataclass
class _TableRows:
    """What one transaction writes to the tables (see ``_pg_schema``)."""

    libraries: list[tuple[str, str, int, bytes]] = field(default_factory=list)
    gone: list[tuple[str]] = field(default_factory=list)
    added: list[tuple[str, str, int, str, bytes]] = field(default_factory=list)
    saved: list[tuple[str, str, int, str, bytes]] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)


@dataclass(eq=False)
class _Transaction:
    """One open transaction, holding the database's head row, and the writes in it."""

    conn: psycopg.Connection[Any]
    #: batches other servers committed, read when it opened (applied to ``_head`` already)
    caught_up: list[Batch]
    batches: list[Batch] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ended: bool = False
    error: StorageError | None = None


class PostgresStore:
    """Implements ``arrwdb.domain.ports.Store``, ``EventHistory`` and ``SharedLog`` over the
    schema ``schema`` of the database at ``url``. ``start()`` (or ``with``) opens it."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        schema: str = "arrwdb",
        history_size: int = 10_000,
        history_max_age: float | None = None,
        notify: bool = True,
        poll_interval: float = 0.5,
        lock_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        max_lag: int = 10_000,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        self.schema = schema
        #: how this server's connections are named in ``pg_stat_activity``
        self.application_name = f"arrwdb-{uuid.uuid4().hex[:12]}"
        self._history_size = max(1, history_size)
        self._history_max_age = history_max_age
        self._notify = notify
        self._poll_interval = poll_interval
        self._lock_timeout_ms = max(1, int(lock_timeout * 1000))
        self._connect_timeout = connect_timeout
        self._max_lag = max_lag
        self._pool_size = max(1, pool_size)
        self._order = threading.Lock()  # writes are put in order under it
        self._head = Catalog()  # the state every ordered write leaves
        self._head_stale = False  # a transaction failed: rebuild _head from _visible
        self._tx: _Transaction | None = None  # the open transaction writes join
        self._arriving = threading.Lock()
        self._waiting = 0  # writers waiting for _order (they may join the open transaction)
        self._writer: psycopg.Connection[Any] | None = None
        self._writing = threading.Lock()  # held from a transaction's start to its end
        # _state guards _visible, _tail and the closed flag
        self._state = threading.Condition(threading.Lock())
        self._visible = Catalog()
        self._tail: dict[int, Batch] = {}
        self._tail_order: deque[int] = deque()
        self._pulling = threading.Lock()  # one reader of other servers' changes at a time
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_retry = 0.0
        self._polled = float("-inf")  # when the log was last read for other servers' changes
        self._pool: ConnectionPool[Any] | None = None
        self._sql: Statements | None = None
        self._database_head = 0  # the database's head, as last seen
        self._stop = threading.Event()
        self._pruner: threading.Thread | None = None
        self._started = False
        self._closed = False

    # ---- opening -----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect, create or check the schema, load the tables. Raises ``StorageError``."""
        if self._started:
            raise RuntimeError("a PostgresStore is started once")
        self._started = True
        try:  # one connection first: its error says why (a pool's only that it timed out)
            with psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout)),
                application_name=self.application_name,
            ) as conn:
                ensure_schema(conn, self.schema)
                self._sql = Statements(conn, self.schema)
                self._load(conn)
        except SchemaError as exc:
            self._closed = True
            raise StorageError(str(exc)) from None
        except psycopg.Error as exc:
            self._closed = True
            raise self._unavailable(
                f"cannot open the store (schema {self.schema!r})", exc
            ) from None
        pool: ConnectionPool[Any] = ConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            kwargs={"autocommit": True, "application_name": self.application_name},
            open=False,
            name="arrwdb",
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except PoolTimeout as exc:
            pool.close()
            self._closed = True
            raise self._unavailable("cannot connect", exc) from None
        self._pool = pool
        self._connect_listener()
        self._pruner = threading.Thread(target=self._prune_periodically, name="arrwdb-pg-prune")
        self._pruner.daemon = True
        self._pruner.start()

    def _load(self, conn: psycopg.Connection[Any]) -> None:
        """The tables as of one position (a repeatable-read snapshot)."""
        assert self._sql is not None
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(self._sql.read_head).fetchone()
            position = int(row[0]) if row else 0
            binary = conn.cursor(binary=True)  # bytea as it is stored (not hex text)
            libraries = [decode_library(r[1]) for r in binary.execute(self._sql.load_libraries)]
            entries: dict[str, list[Entry]] = {lib.id: [] for lib in libraries}
            for library_id, at, record in binary.execute(self._sql.load_documents):
                entries.setdefault(library_id, []).append((int(at), decode_document(record)))
        self._visible.restore(position, libraries, entries)
        self._head = self._visible.copy()
        self._database_head = position

    # ---- the change log ----------------------------------------------------------------------

    def write(self, build: Build) -> PostgresCommit | Done:
        """Order a write (``ports.ChangeLog.write``): it joins the open transaction, or opens
        one (which waits for the database's head row)."""
        with self._arriving:
            self._waiting += 1
        try:
            self._order.acquire()
        finally:
            with self._arriving:
                self._waiting -= 1
        try:
            return self._ordered(build)
        finally:
            self._order.release()

    def _ordered(self, build: Build) -> PostgresCommit | Done:
        """(Caller holds ``_order``.)"""
        self._check_open()
        tx = self._tx
        if tx is None:
            tx = self._tx = self._begin()
        try:
            batch = Batch(self._head.position + 1, tuple(build(self._head)))
        except BaseException:
            if not tx.batches:
                self._abandon(tx)
            raise
        if not batch.changes:
            if not tx.batches:
                self._abandon(tx)
            return Done(batch)
        self._head.apply(batch)
        tx.batches.append(batch)
        return PostgresCommit(self, tx, batch)

    def _begin(self) -> _Transaction:
        """(Caller holds ``_order``.) Open a transaction holding the head row, with ``_head``
        brought up to the database's head."""
        self._writing.acquire()  # the previous transaction has ended
        try:
            conn = self._writer_connection()
            if self._head_stale:
                with self._state:
                    self._head = self._visible.copy()
                self._head_stale = False
            assert self._sql is not None
            with conn.cursor() as cur:
                with conn.pipeline():
                    cur.execute("BEGIN")
                    cur.execute(self._sql.lock_head)
                row = cur.fetchone()
            last = int(row[0]) if row else 0
            if last < self._head.position:
                raise StorageError(
                    f"the database at {masked(self.url)} is at position {last}, behind this "
                    f"server ({self._head.position}): was it restored from a backup? Restart "
                    "the server"
                )
            caught_up = self._batches_between(conn, self._head.position, last)
            for batch in caught_up:
                self._head.apply(batch)
            self._database_head = max(self._database_head, last)
            return _Transaction(conn, caught_up)
        except BaseException as exc:
            self._head_stale = True
            self._drop_writer()
            self._writing.release()
            if isinstance(exc, psycopg.Error):
                raise self._unavailable("could not start a write", exc) from None
            raise

    def _abandon(self, tx: _Transaction) -> None:
        """(Caller holds ``_order``.) End an open transaction that holds no write."""
        self._tx = None
        try:
            tx.conn.execute("ROLLBACK")
        except psycopg.Error:
            self._drop_writer()
        finally:
            tx.ended = True
            self._writing.release()
        self._publish(tx.caught_up)

    def _finish(self, tx: _Transaction, batch: Batch) -> Batch:
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
        sql = self._sql
        assert sql is not None
        conn = tx.conn
        try:
            try:
                changes = [_change_row(b) for b in tx.batches]
                rows = self._table_rows(tx.batches)
                last = tx.batches[-1].last
                with conn.cursor() as cur:
                    if len(rows.added) >= COPY_FROM:  # (the key to the library is checked at
                        with cur.copy(sql.copy_documents) as copy:  # commit: its row follows)
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
                        cur.execute(sql.set_head, (last,))
                        if self._notify:
                            cur.execute("SELECT pg_notify(%s, %s)", (sql.channel, str(last)))
                        cur.execute("COMMIT")
            except psycopg.Error as exc:
                self._head_stale = True
                self._drop_writer()
                tx.error = self._unavailable("could not commit a write", exc)
            except BaseException:
                self._head_stale = True
                self._drop_writer()
                raise
        finally:
            self._writing.release()
        if tx.error is None:
            self._database_head = max(self._database_head, tx.batches[-1].last)
            self._publish([*tx.caught_up, *tx.batches])
        else:
            self._publish(tx.caught_up)  # committed by others: they stand

    def _table_rows(self, batches: Sequence[Batch]) -> _TableRows:
        """The rows that bring the tables to the state after ``batches``, as ``_head`` holds
        them (no write joins a transaction once it commits): each library and document they
        touched, once. A document only added (no other change of it) is copied in bulk."""
        head = self._head
        rows = _TableRows()
        created: dict[str, int] = {}
        libraries: dict[str, None] = {}
        documents: dict[tuple[str, str], bool] = {}  # -> only added in these batches
        for batch in batches:
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
                rows.libraries.append(
                    (lib.id, lib.name, created.get(lib.id, 0), encode_library(lib))
                )
        for (library_id, document_id), added in documents.items():
            if head.library(library_id) is None:
                continue  # deleted with its library
            entry = head.entry(library_id, document_id)
            if entry is None:
                rows.deleted.append((library_id, document_id))
                continue
            at, doc = entry
            row = (library_id, document_id, at, doc.title, encode_document(doc))
            (rows.added if added else rows.saved).append(row)
        return rows

    def _publish(self, batches: Sequence[Batch]) -> None:
        """Apply committed batches to the visible state, in position order (each once)."""
        if not batches:
            return
        with self._state:
            visible = self._visible
            for batch in batches:
                if batch.first <= visible.position:
                    continue  # applied already (read from the log first)
                if batch.first != visible.position + 1:
                    logger.error(
                        "batch at %d does not follow position %d", batch.first, visible.position
                    )
                    break
                visible.apply(batch)
                self._tail[batch.first] = batch
                self._tail_order.append(batch.first)
                if len(self._tail_order) > TAIL_BATCHES:
                    self._tail.pop(self._tail_order.popleft(), None)
            self._state.notify_all()

    def read(self, after: int, limit: int) -> list[Batch]:
        head = self.head
        out: list[Batch] = []
        count = 0
        while after < head:
            batch = self._tail.get(after + 1)
            if batch is None or (out and count + len(batch) > limit):
                break
            out.append(batch)
            count += len(batch)
            after = batch.last
        if out or after >= head:
            return out
        with self._connection() as conn:
            return self._read_batches(conn, after, head, limit)

    def _batches_between(
        self, conn: psycopg.Connection[Any], after: int, through: int
    ) -> list[Batch]:
        """Every batch in ``(after, through]``: from memory where it still is, else read."""
        out: list[Batch] = []
        while after < through:
            batch = self._tail.get(after + 1)
            if batch is None:
                read = self._read_batches(conn, after, through, 10_000)
                if not read:
                    break
                out.extend(read)
                after = read[-1].last
            else:
                out.append(batch)
                after = batch.last
        return out

    def _read_batches(
        self, conn: psycopg.Connection[Any], after: int, through: int, limit: int
    ) -> list[Batch]:
        """Whole batches in ``(after, through]`` from the log, about ``limit`` changes.
        Raises ``HistoryLostError`` when the ones right after ``after`` are pruned."""
        assert self._sql is not None
        out: list[Batch] = []
        count = 0
        rows = (
            conn.cursor(binary=True)
            .execute(self._sql.batches_after, (after, through, ROWS_PER_READ))
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
                raise StorageError(
                    f"unreadable change log row at position {first}: {exc}"
                ) from None
            out.append(batch)
            count += len(batch)
            expected = batch.last + 1
        if not out and after < through:
            raise HistoryLostError(after, self.earliest)
        return out

    @property
    def head(self) -> int:
        return self._visible.position

    def wait_for(self, after: int, timeout: float | None = None) -> int:
        """Block until the visible head passes ``after``: read what other servers committed,
        woken by a notification or by the poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            head = self.head
            if head > after or self._closed:
                return head
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return head
            wait = self._poll_interval if remaining is None else min(remaining, self._poll_interval)
            if self._pulling.acquire(blocking=False):
                try:
                    self._pull(wait)
                finally:
                    self._pulling.release()
            else:
                with self._state:
                    self._state.wait_for(lambda: self.head > after or self._closed, wait)

    def _pull(self, wait: float) -> None:
        """Apply what other servers committed: read the log when a notification names a
        position this server lacks, or when the poll interval has passed since it last read
        (the backstop for lost notifications); a notification of its own commit costs
        nothing."""
        if self._poll_due() and self._pull_once():
            return
        notified = self._await_news(wait)
        if notified > self.head or self._poll_due():
            self._pull_once()

    def _poll_due(self) -> bool:
        return time.monotonic() - self._polled >= self._poll_interval

    def _pull_once(self) -> bool:
        self._polled = time.monotonic()
        try:
            with self._connection() as conn:
                batches = self._read_batches_or_none(conn)
        except StorageError as exc:
            logger.warning("following the log: %s", exc)
            return False
        self._publish(batches)
        return bool(batches)

    def _read_batches_or_none(self, conn: psycopg.Connection[Any]) -> list[Batch]:
        assert self._sql is not None
        after = self.head
        row = conn.execute(self._sql.read_head).fetchone()
        last = int(row[0]) if row else 0
        self._database_head = max(self._database_head, last)
        if last <= after:
            return []
        return self._read_batches(conn, after, last, 10_000)

    def _await_news(self, wait: float) -> int:
        """Up to ``wait`` seconds, until a notification of a commit arrives; the highest
        position notified (0: none, or no notifications)."""
        listener = self._listener if self._notify else None
        if listener is None:
            if self._notify and time.monotonic() >= self._listener_retry:
                self._connect_listener()
            self._stop.wait(wait)
            return 0
        highest = 0
        try:
            for note in listener.notifies(timeout=wait, stop_after=1):
                highest = max(highest, _position(note.payload))
            for note in listener.notifies(timeout=0):  # the ones that came meanwhile
                highest = max(highest, _position(note.payload))
        except psycopg.Error as exc:
            logger.warning("lost the notification connection (%s); polling", exc)
            self._close_listener()
        self._database_head = max(self._database_head, highest)
        return highest

    # ---- the event history -------------------------------------------------------------------

    @property
    def earliest(self) -> int:
        assert self._sql is not None
        try:
            with self._connection() as conn:
                if self._history_max_age is None:
                    row = conn.execute(self._sql.earliest).fetchone()
                else:
                    horizon = time.time() - self._history_max_age
                    row = conn.execute(self._sql.earliest_since, (horizon,)).fetchone()
        except StorageError:
            return self.head + 1
        return int(row[0]) if row and row[0] is not None else self.head + 1

    def events_after(
        self, after: int, limit: int, library_id: str | None, until: int
    ) -> tuple[list[Event], int]:
        until = min(until, self.head)
        if after >= until:
            return [], after
        earliest = self.earliest
        if after + 1 < earliest:
            raise HistoryLostError(after, earliest)
        assert self._sql is not None
        found: list[Event] = []
        through = after
        with self._connection() as conn:
            while through < until:
                rows = (
                    conn.cursor(binary=True)
                    .execute(
                        self._sql.events_after,
                        (library_id, library_id, through, until, ROWS_PER_READ),
                    )
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
                        raise StorageError(
                            f"unreadable events at position {first}: {exc}"
                        ) from None
                    for event in decoded:
                        seq = event.seq
                        if seq <= through:
                            continue
                        if seq > until:
                            break
                        if library_id is None or event.library_id == library_id:
                            found.append(event)
                        through = seq
                        if len(found) >= limit:
                            return found, through
        return found, through

    # ---- reads -------------------------------------------------------------------------------

    def list_libraries(self) -> list[Library]:
        with self._state:
            return self._visible.libraries()

    def get_document(self, library_id: str, document_id: str) -> Document | None:
        with self._state:
            return self._visible.document(library_id, document_id)

    def list_documents(self, library_id: str, limit: int, cursor: str | None) -> Page:
        with self._state:
            return self._visible.page(library_id, limit, cursor)

    def iter_documents(self, library_id: str) -> Iterator[Document]:
        with self._state:
            entries = self._visible.entries(library_id)
        for _, doc in entries:
            yield doc

    # ---- health ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``StorageError`` if the database does not answer, or if this server is more
        than ``max_lag`` changes behind it."""
        self._check_open()
        assert self._sql is not None
        with self._connection(timeout=2.0) as conn:
            row = conn.execute(self._sql.read_head).fetchone()
        last = int(row[0]) if row else 0
        self._database_head = max(self._database_head, last)
        behind = last - self.head
        if behind > self._max_lag:
            raise StorageError(
                f"this server is {behind} changes behind the database (more than {self._max_lag})"
            )

    @property
    def behind(self) -> int:
        """How many changes the database had, when last asked, that are not visible here."""
        return max(0, self._database_head - self.head)

    # ---- retention ---------------------------------------------------------------------------

    def prune(self) -> None:
        """Delete the log rows older than the retained history (the last ``history_size``
        positions, younger than ``history_max_age``); the newest row always stays."""
        assert self._sql is not None
        head = self._database_head
        with self._connection() as conn:
            conn.execute(self._sql.prune_before, (head - self._history_size + 1,))
            if self._history_max_age is not None:
                horizon = time.time() - self._history_max_age
                conn.execute(self._sql.prune_older, (horizon, head))

    def _prune_periodically(self) -> None:
        while not self._stop.wait(5.0):
            try:
                self.prune()
            except (StorageError, psycopg.Error) as exc:
                logger.warning("could not prune the change log: %s", exc)

    # ---- connections -------------------------------------------------------------------------

    def _writer_connection(self) -> psycopg.Connection[Any]:
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            # transactions are begun and committed by statements (BEGIN in the round trip
            # that locks the head, COMMIT in the one that writes): one round trip each
            conn = self._writer = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout)),
                application_name=self.application_name,
                options=f"-c lock_timeout={self._lock_timeout_ms} "
                "-c idle_in_transaction_session_timeout=60000",
            )
        return conn

    def _drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _connection(self, timeout: float | None = None) -> Any:
        """A pooled connection (autocommit) as a context manager; ``StorageError`` if none."""
        pool = self._pool
        if pool is None or self._closed:
            raise StorageError(f"the store at {masked(self.url)} is not open")
        return _Pooled(self, pool, self._connect_timeout if timeout is None else timeout)

    def _connect_listener(self) -> None:
        if not self._notify or self._closed:
            return
        assert self._sql is not None
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self._connect_timeout)),
                application_name=self.application_name,
            )
            conn.execute(self._sql.listen)
        except psycopg.Error as exc:
            logger.warning("cannot listen for notifications (%s); polling", exc)
            self._listener_retry = time.monotonic() + self._poll_interval
            return
        self._listener = conn

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        self._listener_retry = time.monotonic() + self._poll_interval
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _unavailable(self, what: str, exc: BaseException) -> StorageError:
        return StorageError(f"{what}: PostgreSQL at {masked(self.url)}: {exc}".rstrip())

    def _check_open(self) -> None:
        if self._closed or self._pool is None:
            raise StorageError(f"the store at {masked(self.url)} is not open")

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Close the connections (an open transaction is rolled back). Idempotent."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.notify_all()
        self._stop.set()
        with self._order:
            tx = self._tx
            if tx is not None and not tx.batches:
                self._abandon(tx)
        if self._pruner is not None:
            self._pruner.join()
        with self._writing:
            self._drop_writer()
        self._close_connections()

    def _close_connections(self) -> None:
        self._closed = True
        self._close_listener()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def __enter__(self) -> PostgresStore:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Pooled:
    """A pooled connection whose failures are ``StorageError``s."""

    def __init__(self, store: PostgresStore, pool: ConnectionPool[Any], timeout: float) -> None:
        self._store = store
        self._context = pool.connection(timeout=timeout)

    def __enter__(self) -> psycopg.Connection[Any]:
        try:
            conn: psycopg.Connection[Any] = self._context.__enter__()
            return conn
        except (PoolTimeout, psycopg.Error) as exc:
            raise self._store._unavailable("no connection", exc) from None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self._context.__exit__(kind, value, traceback)
        if isinstance(value, psycopg.Error):
            raise self._store._unavailable("a read failed", value) from None


class PostgresCommit:
    """The ``Commit`` of a write in an open transaction: committed, with the writes that
    joined it, by the first of them to wait."""

    __slots__ = ("_batch", "_store", "_tx")

    def __init__(self, store: PostgresStore, tx: _Transaction, batch: Batch) -> None:
        self._store = store
        self._tx = tx
        self._batch = batch

    def wait(self) -> Batch:
        return self._store._finish(self._tx, self._batch)


def _change_row(batch: Batch) -> tuple[int, int, str, float, bytes, bytes]:
    changes = batch.changes
    library = changes[0].library_id
    if any(change.library_id != library for change in changes):
        library = ""
    at = changes[-1].at.timestamp()
    return (batch.first, batch.last, library, at, encode_events(batch), encode_changes(changes))


def _position(payload: str) -> int:
    """The position a notification names (its commit's last), or 0."""
    return int(payload) if payload.isdigit() and len(payload) <= 20 else 0
