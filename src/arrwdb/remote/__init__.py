"""The client of an arrwDB server: ``arrwdb.connect(url)`` and ``arrwdb.connect_async(url)``
give the in-process API (``arrwdb.api``) over HTTP: the same methods, arguments, results and
exceptions, with change streams and live queries over Server-Sent Events that resume by
themselves."""

from __future__ import annotations

from arrwdb.remote._aevents import AsyncRemoteEventStream
from arrwdb.remote._events import RemoteEventStream
from arrwdb.remote._http import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from arrwdb.remote._ingest import AsyncIngest, Ingest, IngestResult
from arrwdb.remote._watches import (
    AsyncRemoteWatch,
    AsyncRemoteWatchEvents,
    RemoteWatch,
    RemoteWatchEvents,
)
from arrwdb.remote._wire import ServerUnavailableError
from arrwdb.remote.aio import AsyncRemoteDatabase, AsyncRemoteLibrary
from arrwdb.remote.sync import RemoteDatabase, RemoteLibrary


def connect(
    url: str = "http://127.0.0.1:8000",
    api_key: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> RemoteDatabase:
    """A database served by arrwDB at ``url``, with the API of ``arrwdb.open()``.

    ``api_key`` is sent as ``Authorization: Bearer``. ``timeout`` bounds each request;
    a request that finds the server unreachable or restarting is tried again ``retries``
    times (backing off; writes carry an ``Idempotency-Key``, so a retried write is applied
    once), then raises ``ServerUnavailableError``.
    """
    return RemoteDatabase(url, api_key, timeout=timeout, retries=retries)


def connect_async(
    url: str = "http://127.0.0.1:8000",
    api_key: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> AsyncRemoteDatabase:
    """The async twin of :func:`connect` (the API of ``arrwdb.open_async()``)."""
    return AsyncRemoteDatabase(url, api_key, timeout=timeout, retries=retries)


__all__ = [
    "AsyncIngest",
    "AsyncRemoteDatabase",
    "AsyncRemoteEventStream",
    "AsyncRemoteLibrary",
    "AsyncRemoteWatch",
    "AsyncRemoteWatchEvents",
    "Ingest",
    "IngestResult",
    "RemoteDatabase",
    "RemoteEventStream",
    "RemoteLibrary",
    "RemoteWatch",
    "RemoteWatchEvents",
    "ServerUnavailableError",
    "connect",
    "connect_async",
]
