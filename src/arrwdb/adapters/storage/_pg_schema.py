"""The PostgreSQL store's tables, created and migrated at start.

Everything lives in one schema (``postgres_schema``, default ``arrwdb``)::

    meta       key text primary key, value text        -- "schema_version"
    head       id = 1, last_id bigint                  -- the position of the last change
    changes    first bigint primary key, last bigint, library_id text, at float8,
               events bytea, body bytea                -- the log: one row per committed batch
    libraries  id text primary key, name text unique (deferred), position bigint, record bytea
    documents  library_id text -> libraries on delete cascade (checked at commit), id text,
               position bigint,
               title text, record bytea, primary key (library_id, id)
    keys       key text primary key, at float8, receipt bytea   -- idempotency keys (24 h)

Embeddings do not compress: the columns that carry them are stored uncompressed (``STORAGE
EXTERNAL``), which spares the database compressing them on every write.

``changes`` is the change log: a row is one batch of changes at consecutive positions
(``first``..``last``), ``body`` its changes and ``events`` its change events, both in the disk
log's encoding (``_codec``: msgpack; embeddings as little-endian float32 bytes). ``libraries``
and ``documents`` are the state the log leaves, kept in the same transaction (a document's
``record`` is the change that saved it last, the same bytes as in its ``changes`` row: the
document with its chunks and their embeddings; ``position`` is its listing place). A
server starts from them, so the log can be pruned to the retained history.

``head`` is the single counter row that orders writes: a write locks it first and holds it to
its commit, so positions are gap-free and in commit order, on every server.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import sql

#: The layout this build writes and reads; a schema at a newer version is refused.
SCHEMA_VERSION: Final = 1

_CREATE: Final = """
CREATE TABLE IF NOT EXISTS {schema}.meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.head (
    id integer PRIMARY KEY CHECK (id = 1),
    last_id bigint NOT NULL
);
INSERT INTO {schema}.head (id, last_id) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS {schema}.changes (
    first bigint PRIMARY KEY,
    last bigint NOT NULL,
    library_id text NOT NULL,
    at double precision NOT NULL,
    events bytea NOT NULL,
    body bytea NOT NULL
);
ALTER TABLE {schema}.changes ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS {schema}.libraries (
    id text PRIMARY KEY,
    name text NOT NULL,
    position bigint NOT NULL,
    record bytea NOT NULL,
    CONSTRAINT libraries_name_key UNIQUE (name) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS {schema}.documents (
    library_id text NOT NULL REFERENCES {schema}.libraries (id) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED,
    id text NOT NULL,
    position bigint NOT NULL,
    title text NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (library_id, id)
);
ALTER TABLE {schema}.documents ALTER COLUMN record SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS {schema}.keys (
    key text PRIMARY KEY,
    at double precision NOT NULL,
    receipt bytea NOT NULL
);
"""


class SchemaError(Exception):
    """The schema is not one this build can use."""


def ensure_schema(conn: Any, schema: str) -> None:
    """Create the schema's tables if they are missing (one server at a time: under an
    advisory lock), or check that their version is one this build reads. Commits. Raises
    ``SchemaError``."""
    name = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"arrwdb:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
        exists = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND "
            "table_name = 'meta'",
            (schema,),
        ).fetchone()
        if exists:
            row = conn.execute(
                sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(name)
            ).fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"schema {schema!r} is at version {version}, written by a newer arrwDB; "
                    f"this one reads up to version {SCHEMA_VERSION}: upgrade arrwDB"
                )
            if version == SCHEMA_VERSION:
                return
        for statement in _CREATE.strip().split(";\n"):
            conn.execute(sql.SQL(statement).format(schema=name))
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ).format(name),
            (str(SCHEMA_VERSION),),
        )


def drop_schema(conn: Any, schema: str) -> None:
    """Drop the schema and everything in it (for tests). Commits."""
    with conn.transaction():
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class Statements:
    """The store's SQL for one schema, composed once (identifiers quoted)."""

    def __init__(self, conn: Any, schema: str) -> None:
        def compose(text: str) -> str:
            return sql.SQL(text).format(s=sql.Identifier(schema)).as_string(conn)

        self.lock_head = compose("SELECT last_id FROM {s}.head WHERE id = 1 FOR UPDATE")
        self.read_head = compose("SELECT last_id FROM {s}.head WHERE id = 1")
        self.set_head = compose("UPDATE {s}.head SET last_id = %s WHERE id = 1")
        self.batches_after = compose(
            "SELECT first, last, body FROM {s}.changes WHERE last > %s AND first <= %s "
            "ORDER BY first LIMIT %s"
        )
        # the events of the rows of one library (or of several) only: the others are skipped
        # without sending their events
        self.events_after = compose(
            "SELECT first, last, library_id, CASE WHEN %s::text IS NULL OR library_id = '' "
            "OR library_id = %s THEN events END FROM {s}.changes WHERE last > %s AND "
            "first <= %s ORDER BY first LIMIT %s"
        )
        self.earliest = compose("SELECT min(first) FROM {s}.changes")
        self.earliest_since = compose("SELECT min(first) FROM {s}.changes WHERE at >= %s")
        self.insert_change = compose(
            "INSERT INTO {s}.changes (first, last, library_id, at, events, body) "
            "VALUES (%s, %s, %s, %s, %b, %b)"
        )
        self.upsert_library = compose(
            "INSERT INTO {s}.libraries (id, name, position, record) VALUES (%s, %s, %s, %b) "
            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, record = EXCLUDED.record"
        )
        self.delete_library = compose("DELETE FROM {s}.libraries WHERE id = %s")
        self.upsert_document = compose(
            "INSERT INTO {s}.documents (library_id, id, position, title, record) "
            "VALUES (%s, %s, %s, %s, %b) ON CONFLICT (library_id, id) DO UPDATE SET "
            "position = EXCLUDED.position, title = EXCLUDED.title, record = EXCLUDED.record"
        )
        self.copy_documents = compose(
            "COPY {s}.documents (library_id, id, position, title, record) FROM STDIN "
            "(FORMAT BINARY)"
        )
        self.delete_document = compose(
            "DELETE FROM {s}.documents WHERE library_id = %s AND id = %s"
        )
        self.load_libraries = compose(
            "SELECT position, record FROM {s}.libraries ORDER BY position"
        )
        self.load_documents = compose(
            "SELECT library_id, position, record FROM {s}.documents ORDER BY library_id, position"
        )
        self.upsert_key = compose(
            "INSERT INTO {s}.keys (key, at, receipt) VALUES (%s, %s, %b) ON CONFLICT (key) "
            "DO UPDATE SET at = EXCLUDED.at, receipt = EXCLUDED.receipt"
        )
        self.load_keys = compose("SELECT receipt FROM {s}.keys WHERE at >= %s ORDER BY at")
        self.prune_keys = compose("DELETE FROM {s}.keys WHERE at < %s")
        self.prune_before = compose("DELETE FROM {s}.changes WHERE last < %s")
        self.prune_older = compose("DELETE FROM {s}.changes WHERE at < %s AND last < %s")
        self.channel = f"arrwdb_{schema}"
        self.listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)).as_string(conn)
