"""Watches kept in PostgreSQL (table ``watches`` in the store's schema): shared by every server
on that schema, which polls ``seen`` (ids and times only) to follow the others' watches. One
connection, opened on first use and again after a failure. A query vector is kept as its
float32 little-endian bytes, its filter as JSON text."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from arrwdb.adapters.storage._pg_connections import SideTable
from arrwdb.domain.ports import StoredWatch
from arrwdb.domain.watches import Watch

_TABLE = """
CREATE TABLE IF NOT EXISTS {schema}.watches (
    id text PRIMARY KEY,
    library_id text NOT NULL,
    k integer,
    threshold double precision,
    filter text,
    created_at timestamptz NOT NULL,
    vector bytea NOT NULL,
    query_text text,
    position bigint NOT NULL,
    seen_at double precision NOT NULL
)
"""
_COLUMNS = "id, library_id, k, threshold, filter, created_at, vector, query_text, position, seen_at"


class PostgresWatches:
    """A ``WatchStore`` in ``<schema>.watches``."""

    shared = True

    def __init__(self, url: str, schema: str, connect_timeout: float = 5.0) -> None:
        self._table = SideTable(url, schema, _TABLE, "watches", "arrwdb-watches", connect_timeout)

    def save_watch(self, stored: StoredWatch) -> None:
        w = stored.watch
        self._table.run(
            f"INSERT INTO {{schema}}.watches ({_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "library_id = EXCLUDED.library_id, k = EXCLUDED.k, threshold = EXCLUDED.threshold, "
            "filter = EXCLUDED.filter, created_at = EXCLUDED.created_at, "
            "vector = EXCLUDED.vector, query_text = EXCLUDED.query_text, "
            "position = EXCLUDED.position, seen_at = EXCLUDED.seen_at",
            (
                w.id,
                w.library_id,
                w.k,
                w.threshold,
                None if w.filter is None else json.dumps(dict(w.filter)),
                w.created_at,
                np.ascontiguousarray(w.vector, dtype="<f4").tobytes(),
                w.query_text,
                stored.position,
                stored.seen_at,
            ),
        )

    def delete_watch(self, watch_id: str, idle_before: float | None = None) -> bool:
        if idle_before is None:
            rows = self._table.run(
                "DELETE FROM {schema}.watches WHERE id = %s RETURNING id", (watch_id,), fetch=True
            )
        else:
            rows = self._table.run(
                "DELETE FROM {schema}.watches WHERE id = %s AND seen_at <= %s RETURNING id",
                (watch_id, idle_before),
                fetch=True,
            )
        return bool(rows)

    def load_watches(self, ids: Collection[str] | None = None) -> list[StoredWatch]:
        select = f"SELECT {_COLUMNS} FROM {{schema}}.watches"
        order = " ORDER BY created_at, id"
        if ids is None:
            rows = self._table.run(select + order, (), fetch=True)
        else:
            rows = self._table.run(select + " WHERE id = ANY(%s)" + order, (list(ids),), fetch=True)
        return [_decode(row) for row in rows]

    def seen(self) -> dict[str, float]:
        rows = self._table.run("SELECT id, seen_at FROM {schema}.watches", (), fetch=True)
        return {row[0]: row[1] for row in rows}

    def touch(self, seen: Mapping[str, float]) -> None:
        if not seen:
            return
        self._table.run(
            "UPDATE {schema}.watches AS w SET seen_at = t.at "
            "FROM unnest(%s::text[], %s::float8[]) AS t(id, at) "
            "WHERE w.id = t.id AND w.seen_at < t.at",
            (list(seen), list(seen.values())),
        )

    def close(self) -> None:
        self._table.close()


def _decode(row: tuple[Any, ...]) -> StoredWatch:
    watch_id, library_id, k, threshold, filter_, created_at, vector, query_text = row[:8]
    watch = Watch(
        id=watch_id,
        library_id=library_id,
        k=k,
        threshold=threshold,
        filter=None if filter_ is None else json.loads(filter_),
        created_at=created_at,
        vector=np.frombuffer(bytes(vector), dtype="<f4").astype(np.float32),
        query_text=query_text,
    )
    return StoredWatch(watch, int(row[8]), float(row[9]))
