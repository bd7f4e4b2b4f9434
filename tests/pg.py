"""PostgreSQL for the tests: the machine's server (``ARRWDB_POSTGRES_URL``), one fresh schema
per use, dropped afterwards. Without a reachable server the tests that need it skip (or fail,
when ``ARRWDB_REQUIRE_SERVICES=1``, as on CI)."""

from __future__ import annotations

import functools
import os
import uuid
from typing import Any

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def url() -> str:
    return os.environ.get("ARRWDB_POSTGRES_URL", DEFAULT_URL)


@functools.cache
def _unreachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'arrwdb[postgres]')"
    try:
        with psycopg.connect(url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {url()} is unreachable: {exc}"
    return None


def require() -> None:
    """Skip (or fail, where services are required) unless PostgreSQL answers."""
    reason = _unreachable()
    if reason is None:
        return
    if os.environ.get("ARRWDB_REQUIRE_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def new_schema() -> str:
    return f"arrwdb_test_{uuid.uuid4().hex[:12]}"


def drop(schema: str) -> None:
    import psycopg

    from arrwdb.adapters.storage._pg_schema import drop_schema

    with psycopg.connect(url(), autocommit=True) as conn:
        drop_schema(conn, schema)


def connect() -> Any:
    """An autocommit connection to the test server (for administration)."""
    import psycopg

    return psycopg.connect(url(), autocommit=True)
