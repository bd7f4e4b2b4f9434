"""API keys kept in PostgreSQL (table ``api_keys`` in the store's schema): shared by every
server on that schema. One connection, opened on first use and again after a failure."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import psycopg
from psycopg import sql

from arrwdb.adapters.storage._pg_connections import masked
from arrwdb.domain.errors import StorageError
from arrwdb.domain.models import ApiKey

_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"
_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}.api_keys (
    id text PRIMARY KEY,
    name text NOT NULL,
    libraries text[] NOT NULL,
    access text NOT NULL,
    created_at timestamptz NOT NULL,
    digest text NOT NULL UNIQUE
)
"""


class PostgresKeys:
    """A ``KeyStore`` in ``<schema>.api_keys``."""

    shared = True

    def __init__(self, url: str, schema: str, connect_timeout: float = 5.0) -> None:
        self._url = url
        self._schema = sql.Identifier(schema)
        self._lock_name = f"arrwdb:{schema}"
        self._timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def load_keys(self) -> list[ApiKey]:
        rows = self._run(
            "SELECT id, name, libraries, access, created_at, digest FROM {schema}.api_keys",
            (),
            fetch=True,
        )
        return [ApiKey(r[0], r[1], tuple(r[2]), r[3], r[4], r[5]) for r in rows]

    def save_key(self, key: ApiKey) -> None:
        self._run(
            "INSERT INTO {schema}.api_keys (id, name, libraries, access, created_at, digest) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (key.id, key.name, list(key.libraries), key.access, key.created_at, key.digest),
        )

    def revoke_key(self, key_id: str) -> bool:
        rows = self._run(
            "DELETE FROM {schema}.api_keys WHERE id = %s RETURNING id", (key_id,), fetch=True
        )
        return bool(rows)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, statement: str, params: tuple[Any, ...], fetch: bool = False) -> list[Any]:
        query = sql.SQL(statement).format(schema=self._schema)
        with self._lock:
            for attempt in (1, 2):  # once more on a new connection if the old one broke
                try:
                    conn = self._connection()
                    with conn.cursor() as cur:
                        cur.execute(query, params)
                        return cur.fetchall() if fetch else []
                except psycopg.OperationalError as exc:
                    self._drop()
                    if attempt == 2:
                        raise StorageError(
                            f"cannot reach PostgreSQL at {masked(self._url)} for the API "
                            f"keys: {exc}"
                        ) from None
                except psycopg.Error as exc:
                    raise StorageError(f"the API keys table failed: {exc}") from None
        return []

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, int(self._timeout)),
                application_name="arrwdb-keys",
            )
            with conn.transaction():  # one server at a time, as the store's own tables
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._lock_name,))
                conn.execute(sql.SQL(_SCHEMA).format(schema=self._schema))
                conn.execute(sql.SQL(_TABLE).format(schema=self._schema))
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
