"""The PostgreSQL store's connections: a pool for reads, one connection for writes (used by one
transaction at a time), and one that listens for the notifications of commits."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import psycopg
import psycopg.sql
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from arrwdb.domain.errors import StorageError

logger = logging.getLogger("arrwdb.storage")


def masked(url: str) -> str:
    """``url`` with its password hidden (for messages)."""
    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable PostgreSQL URL>"
    host = params.get("host", "")
    port = params.get("port", "")
    user = params.get("user", "")
    db = params.get("dbname", "")
    secret = ":***" if "password" in params else ""
    return f"postgresql://{user}{secret}@{host}{':' if port else ''}{port}/{db}"


class SideTable:
    """One table of the store's schema kept beside the log (API keys, watches): one
    connection, opened on first use (creating the schema and the table, one server at a time)
    and again after a failure. Every failure is a ``StorageError`` naming ``what``."""

    def __init__(
        self, url: str, schema: str, ddl: str, what: str, application: str, timeout: float
    ) -> None:
        self._url = url
        self.schema = psycopg.sql.Identifier(schema)
        self._lock_name = f"arrwdb:{schema}"
        self._ddl = ddl
        self._what = what
        self._application = application
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def run(self, statement: str, params: tuple[Any, ...], fetch: bool = False) -> list[Any]:
        """Execute ``statement`` (``{schema}`` stands for the schema); the rows with
        ``fetch``. Tried once more on a new connection if the old one broke."""
        query = psycopg.sql.SQL(statement).format(schema=self.schema)
        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    with conn.cursor() as cur:
                        cur.execute(query, params)
                        return cur.fetchall() if fetch else []
                except psycopg.OperationalError as exc:
                    self._drop()
                    if attempt == 2:
                        raise StorageError(
                            f"cannot reach PostgreSQL at {masked(self._url)} for the "
                            f"{self._what}: {exc}"
                        ) from None
                except psycopg.Error as exc:
                    raise StorageError(f"the {self._what} table failed: {exc}") from None
        return []

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, int(self._timeout)),
                application_name=self._application,
            )
            with conn.transaction():  # one server at a time, as the store's own tables
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_name,))
                conn.execute(
                    psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {schema}").format(
                        schema=self.schema
                    )
                )
                conn.execute(psycopg.sql.SQL(self._ddl).format(schema=self.schema))
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class Connections:
    """Opens, hands out and closes the connections of one store; every failure is a
    ``StorageError`` naming the database (password masked)."""

    def __init__(
        self,
        url: str,
        application_name: str,
        *,
        connect_timeout: float,
        lock_timeout_ms: int,
        pool_size: int,
        retry_after: float,
    ) -> None:
        self.url = url
        self.application_name = application_name
        self._connect_timeout = connect_timeout
        self._lock_timeout_ms = lock_timeout_ms
        self._pool_size = pool_size
        self._retry_after = retry_after
        self._pool: ConnectionPool[Any] | None = None
        self._writer: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None
        self._listen_sql: str | None = None
        self._listener_retry = 0.0
        self.closed = False

    def unavailable(self, what: str, exc: BaseException) -> StorageError:
        return StorageError(f"{what}: PostgreSQL at {masked(self.url)}: {exc}".rstrip())

    def connect(self, **options: Any) -> psycopg.Connection[Any]:
        """A new autocommit connection. Raises ``psycopg.Error``."""
        return psycopg.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, int(self._connect_timeout)),
            application_name=self.application_name,
            **options,
        )

    def open_pool(self) -> None:
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
            raise self.unavailable("cannot connect", exc) from None
        self._pool = pool

    def pooled(self, timeout: float | None = None) -> Pooled:
        """A pooled connection, as a context manager."""
        pool = self._pool
        if pool is None or self.closed:
            raise StorageError(f"the store at {masked(self.url)} is not open")
        return Pooled(self, pool, self._connect_timeout if timeout is None else timeout)

    # -- writes -----------------------------------------------------------------------------

    def writer(self) -> psycopg.Connection[Any]:
        """The connection of writes (connected again after a failure). Transactions on it are
        begun and committed by statements (``BEGIN`` in the round trip that locks the head,
        ``COMMIT`` in the one that writes): one round trip each."""
        conn = self._writer
        if conn is None or conn.closed or conn.broken:
            conn = self._writer = self.connect(
                options=f"-c lock_timeout={self._lock_timeout_ms} "
                "-c idle_in_transaction_session_timeout=60000"
            )
        return conn

    def drop_writer(self) -> None:
        """Close the connection of writes (an open transaction on it is rolled back)."""
        conn, self._writer = self._writer, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- notifications ----------------------------------------------------------------------

    def listen(self, listen_sql: str) -> None:
        """Listen for notifications (``LISTEN``); on failure, log and poll until a retry."""
        self._listen_sql = listen_sql
        if self.closed:
            return
        try:
            conn = self.connect()
            conn.execute(listen_sql)
        except psycopg.Error as exc:
            logger.warning("cannot listen for notifications (%s); polling", exc)
            self._listener_retry = time.monotonic() + self._retry_after
            return
        self._listener = conn

    def await_news(self, wait: float, stop: threading.Event) -> int:
        """Up to ``wait`` seconds, until a notification of a commit arrives; the highest
        position notified (0: none, or not listening)."""
        listener = self._listener
        if listener is None:
            if self._listen_sql is not None and time.monotonic() >= self._listener_retry:
                self.listen(self._listen_sql)
            stop.wait(wait)
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
        return highest

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        self._listener_retry = time.monotonic() + self._retry_after
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close every connection (the caller has ended its transactions)."""
        self.closed = True
        self.drop_writer()
        self._close_listener()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


class Pooled:
    """A pooled connection whose failures are ``StorageError``s."""

    def __init__(self, owner: Connections, pool: ConnectionPool[Any], timeout: float) -> None:
        self._owner = owner
        self._context = pool.connection(timeout=timeout)

    def __enter__(self) -> psycopg.Connection[Any]:
        try:
            conn: psycopg.Connection[Any] = self._context.__enter__()
            return conn
        except (PoolTimeout, psycopg.Error) as exc:
            raise self._owner.unavailable("no connection", exc) from None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        self._context.__exit__(kind, value, traceback)
        if isinstance(value, psycopg.Error):
            raise self._owner.unavailable("a read failed", value) from None


def _position(payload: str) -> int:
    """The position a notification names (its commit's last), or 0."""
    return int(payload) if payload.isdigit() and len(payload) <= 20 else 0
