"""The PostgreSQL store: one dataset and one change log shared by several servers.

Needs the ``postgres`` extra (``pip install 'arrwdb[postgres]'``: psycopg 3 and psycopg-pool).
The tables are described in ``_pg_schema``; this module is how a server writes and follows them.

Writes
------
The database orders writes (``_pg_writer``): a transaction locks the single ``head`` row first
and holds it to its commit, so every server's writes take consecutive positions, gap-free, in
commit order. Holding it, the server brings its copy of the ordered state up to the database's
head with what other servers committed, then runs each write's rule against it, exactly as the
memory and disk stores do: a library name is unique, a document id is not taken, a PATCH reads
the version it replaces, across all servers. The tables' constraints back this up. Concurrent
writes of one server share one transaction (group commit). A write is acknowledged once
committed and applied to ``_visible``, the state reads are served from.

The modules: ``_pg_schema`` (tables, SQL), ``_pg_connections`` (pool, writer, listener),
``_pg_writer`` (transactions), ``_pg_log`` (rows written and read back), this one (the store).

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

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "PostgreSQL storage needs the postgres extra: pip install 'arrwdb[postgres]'"
    ) from exc

from arrwdb.adapters.storage._codec import decode_library, decode_saved_document
from arrwdb.adapters.storage._pg_connections import Connections, masked
from arrwdb.adapters.storage._pg_log import (
    earliest,
    events_after,
    load_receipts,
    prune,
    read_batches,
)
from arrwdb.adapters.storage._pg_schema import SchemaError, Statements, ensure_schema
from arrwdb.adapters.storage._pg_writer import PostgresCommit, Writer
from arrwdb.adapters.storage._tables import CatalogReads, tail_batches
from arrwdb.adapters.storage.memory import Done
from arrwdb.domain.catalog import Catalog, Entry
from arrwdb.domain.changes import Batch, WriteKey
from arrwdb.domain.errors import HistoryLostError, StorageError
from arrwdb.domain.events import Event
from arrwdb.domain.ports import Build, Measurement

__all__ = ["PostgresCommit", "PostgresStore", "masked"]

logger = logging.getLogger("arrwdb.storage")

#: Recent batches kept in memory for the projector and the next write's catch-up.
TAIL_BATCHES = 64
#: Seconds between prunes of the log.
PRUNE_EVERY = 5.0


class PostgresStore(CatalogReads):
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
        self._max_lag = max_lag
        self._connections = Connections(
            url,
            self.application_name,
            connect_timeout=connect_timeout,
            lock_timeout_ms=max(1, int(lock_timeout * 1000)),
            pool_size=max(1, pool_size),
            retry_after=poll_interval,
        )
        self._sql: Statements | None = None
        self._writer: Writer | None = None
        # _state guards _visible, _tail and the closed flag
        self._state = threading.Condition(threading.Lock())
        self._visible = Catalog()  # the committed state, as far as this server has seen it
        self._tail: dict[int, Batch] = {}
        self._tail_order: deque[int] = deque()
        self._pulling = threading.Lock()  # one reader of other servers' changes at a time
        self._polled = float("-inf")  # when the log was last read for other servers' changes
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
        connections = self._connections
        try:  # one connection first: its error says why (a pool's only that it timed out)
            with connections.connect() as conn:
                ensure_schema(conn, self.schema)
                sql = self._sql = Statements(conn, self.schema)
                self._load(conn, sql)
            connections.open_pool()
        except SchemaError as exc:
            self._closed = True
            raise StorageError(str(exc)) from None
        except psycopg.Error as exc:
            self._closed = True
            raise connections.unavailable(
                f"cannot open the store (schema {self.schema!r})", exc
            ) from None
        except StorageError:
            self._closed = True
            raise
        self._writer = Writer(
            connections,
            sql,
            notify=self._notify,
            visible=self._visible_copy,
            between=self._batches_between,
            publish=self._publish,
            saw_head=self._saw_head,
        )
        if self._notify:
            connections.listen(sql.listen)
        self._pruner = threading.Thread(
            target=self._prune_periodically, name="arrwdb-pg-prune", daemon=True
        )
        self._pruner.start()

    def _load(self, conn: psycopg.Connection[Any], sql: Statements) -> None:
        """The tables as of one position (a repeatable-read snapshot)."""
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = conn.execute(sql.read_head).fetchone()
            position = int(row[0]) if row else 0
            binary = conn.cursor(binary=True)  # bytea as it is stored (not hex text)
            libraries = [decode_library(r[1]) for r in binary.execute(sql.load_libraries)]
            entries: dict[str, list[Entry]] = {lib.id: [] for lib in libraries}
            for library_id, at, record in binary.execute(sql.load_documents):
                entries.setdefault(library_id, []).append((int(at), decode_saved_document(record)))
            receipts = load_receipts(conn, sql)
        self._visible.restore(position, libraries, entries)
        for key, receipt in receipts:
            self._visible.remember(key, receipt)
        self._database_head = position

    # ---- the change log ----------------------------------------------------------------------

    def write(self, build: Build, key: WriteKey | None = None) -> PostgresCommit | Done:
        """Order a write (``ports.ChangeLog.write``): see ``_pg_writer``."""
        writer = self._writer
        if writer is None or self._closed:
            raise StorageError(f"the store at {masked(self.url)} is not open")
        return writer.write(build, key)

    def _visible_copy(self) -> Catalog:
        with self._state:
            return self._visible.copy()

    def _saw_head(self, position: int) -> None:
        self._database_head = max(self._database_head, position)

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
        out = tail_batches(self._tail, after, head, limit)
        if out or after >= head:
            return out
        with self._connections.pooled() as conn:
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
        assert self._sql is not None
        return read_batches(conn, self._sql, after, through, limit)

    @property
    def head(self) -> int:
        return self._visible.position

    # ---- following ---------------------------------------------------------------------------

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
        notified = self._connections.await_news(wait, self._stop)
        self._saw_head(notified)
        if notified > self.head or self._poll_due():
            self._pull_once()

    def _poll_due(self) -> bool:
        return time.monotonic() - self._polled >= self._poll_interval

    def _pull_once(self) -> bool:
        self._polled = time.monotonic()
        assert self._sql is not None
        try:
            with self._connections.pooled() as conn:
                after = self.head
                row = conn.execute(self._sql.read_head).fetchone()
                last = int(row[0]) if row else 0
                self._saw_head(last)
                batches = [] if last <= after else self._read_batches(conn, after, last, 10_000)
        except StorageError as exc:
            logger.warning("following the log: %s", exc)
            return False
        self._publish(batches)
        return bool(batches)

    # ---- the event history -------------------------------------------------------------------

    @property
    def earliest(self) -> int:
        assert self._sql is not None
        try:
            with self._connections.pooled() as conn:
                first = earliest(conn, self._sql, self._history_max_age)
        except StorageError:
            return self.head + 1
        return self.head + 1 if first is None else first

    def events_after(
        self, after: int, limit: int, library_id: str | None, until: int
    ) -> tuple[list[Event], int]:
        until = min(until, self.head)
        if after >= until:
            return [], after
        first = self.earliest
        if after + 1 < first:
            raise HistoryLostError(after, first)
        assert self._sql is not None
        with self._connections.pooled() as conn:
            return events_after(conn, self._sql, after, limit, library_id, until)

    # ---- health ------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``StorageError`` if the database does not answer, or if this server is more
        than ``max_lag`` changes behind it."""
        if self._closed or self._sql is None:
            raise StorageError(f"the store at {masked(self.url)} is not open")
        with self._connections.pooled(timeout=2.0) as conn:
            row = conn.execute(self._sql.read_head).fetchone()
        last = int(row[0]) if row else 0
        self._saw_head(last)
        behind = last - self.head
        if behind > self._max_lag:
            raise StorageError(
                f"this server is {behind} changes behind the database (more than {self._max_lag})"
            )

    def measurements(self) -> list[Measurement]:
        """``Measured``: how far this server's projection is behind the database."""
        return [
            Measurement(
                "arrwdb_follower_lag_events",
                "Changes in the database not yet applied by this server (when last asked).",
                "gauge",
                self.behind,
            )
        ]

    @property
    def behind(self) -> int:
        """How many changes the database had, when last asked, that are not visible here."""
        return max(0, self._database_head - self.head)

    # ---- retention ---------------------------------------------------------------------------

    def prune(self) -> None:
        """Delete the log rows older than the retained history (the last ``history_size``
        positions, younger than ``history_max_age``); the newest row always stays."""
        assert self._sql is not None
        with self._connections.pooled() as conn:
            prune(conn, self._sql, self._database_head, self._history_size, self._history_max_age)

    def _prune_periodically(self) -> None:
        while not self._stop.wait(PRUNE_EVERY):
            try:
                self.prune()
            except (StorageError, psycopg.Error) as exc:
                logger.warning("could not prune the change log: %s", exc)

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Close the connections (an open transaction without writes is rolled back; one
        committing is waited for). Idempotent."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._state.notify_all()
        self._stop.set()
        if self._writer is not None:
            self._writer.close()
        if self._pruner is not None:
            self._pruner.join()
        with self._pulling:  # a follower reading the log is done
            self._connections.close()

    def __enter__(self) -> PostgresStore:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
