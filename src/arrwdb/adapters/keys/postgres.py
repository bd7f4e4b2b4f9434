"""API keys kept in PostgreSQL (table ``api_keys`` in the store's schema): shared by every
server on that schema. One connection, opened on first use and again after a failure."""

from __future__ import annotations

from arrwdb.adapters.storage._pg_connections import SideTable
from arrwdb.domain.models import ApiKey

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
        self._table = SideTable(url, schema, _TABLE, "API keys", "arrwdb-keys", connect_timeout)

    def load_keys(self) -> list[ApiKey]:
        rows = self._table.run(
            "SELECT id, name, libraries, access, created_at, digest FROM {schema}.api_keys",
            (),
            fetch=True,
        )
        return [ApiKey(r[0], r[1], tuple(r[2]), r[3], r[4], r[5]) for r in rows]

    def save_key(self, key: ApiKey) -> None:
        self._table.run(
            "INSERT INTO {schema}.api_keys (id, name, libraries, access, created_at, digest) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (key.id, key.name, list(key.libraries), key.access, key.created_at, key.digest),
        )

    def revoke_key(self, key_id: str) -> bool:
        rows = self._table.run(
            "DELETE FROM {schema}.api_keys WHERE id = %s RETURNING id", (key_id,), fetch=True
        )
        return bool(rows)

    def close(self) -> None:
        self._table.close()
