"""What the client's ``lib.watch(...)`` returns: the in-process ``WatchHandle`` and
``WatchEvents`` (``arrwdb.live``) over HTTP, sync and async.

The watch is made on the server (``POST .../watches``) and removed with the handle
(``DELETE``): by ``close()``, leaving a ``with`` block, the client's ``close()``, or (best
effort) dropping the last reference to it. ``events()`` reads the watch's Server-Sent Events
with the client's stream readers, so a lost connection is resumed after the last event read
(``WatchPosition``): nothing missed, nothing twice; a ``stream.reset`` and a fresh
``watch.ready`` when the server no longer holds the events after it.
"""

from __future__ import annotations

import contextlib
import weakref

import httpx

from arrwdb.domain.errors import NotFoundError
from arrwdb.domain.watches import Watch, WatchEvent
from arrwdb.remote import _calls
from arrwdb.remote._aevents import AsyncSseReader
from arrwdb.remote._events import SseReader
from arrwdb.remote._http import AsyncHttp, Http, headers_of
from arrwdb.remote._sse import WatchPosition

#: How long removing a watch nobody closed may take (at exit, or when its handle is dropped).
FORGET_TIMEOUT = 2.0


def _forget(url: str, headers: dict[str, str]) -> None:
    """Remove a watch its program forgot to close: one try, errors ignored (a watch left
    behind expires once idle for the server's ``watch_ttl``)."""
    with contextlib.suppress(Exception):
        httpx.delete(url, headers=headers, timeout=FORGET_TIMEOUT)


def _describe(watch: Watch, name: str) -> str:
    kind = f"k={watch.k}" if watch.k is not None else f"threshold={watch.threshold}"
    return f"<{name} {watch.id} {kind}>"


class RemoteWatchEvents(SseReader[WatchEvent]):
    """The events of a watch (``w.events()``), as in process: ``watch.ready`` first (or, with
    ``since``, the events after it), then the watch's changes in order. Iterating stops after
    ``timeout`` seconds without an event; when the watch ends (deleted, expired, its library
    deleted), the last event is a ``stream.closed`` whose ``data.reason`` says why. A server
    restart is a lost connection, resumed."""

    def __init__(
        self, http: Http, watch_id: str, path: str, since: str | None, timeout: float | None
    ) -> None:
        super().__init__(http, path, WatchPosition(since=since, watch_id=watch_id), timeout)

    def poll(self) -> WatchEvent | None:
        """The next event if one has arrived, without waiting (``None`` otherwise). Events
        travel from the server: one caused by a write may arrive just after it returns."""
        return self._poll()

    def __enter__(self) -> RemoteWatchEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRemoteWatchEvents(AsyncSseReader[WatchEvent]):
    """``RemoteWatchEvents`` for ``async for``."""

    def __init__(
        self, http: AsyncHttp, watch_id: str, path: str, since: str | None, timeout: float | None
    ) -> None:
        super().__init__(http, path, WatchPosition(since=since, watch_id=watch_id), timeout)

    def poll(self) -> WatchEvent | None:
        """The next event if one has arrived, without waiting (``None`` otherwise)."""
        return self._poll()

    async def __aenter__(self) -> AsyncRemoteWatchEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Handle:
    """What the sync and the async handle share: the watch, its path, the removal of a
    watch nobody closed."""

    def __init__(self, url: str, api_key: str | None, watch: Watch) -> None:
        self.info = watch
        self._path = _calls.watch_path(watch.library_id, watch.id)
        self._forget = weakref.finalize(self, _forget, url + self._path, headers_of(api_key))

    @property
    def id(self) -> str:
        return self.info.id

    def _closing(self) -> bool:
        """Whether this close is the first (then the caller removes the watch)."""
        return self._forget.detach() is not None


class RemoteWatch(_Handle):
    """A live query of one library of a server (``lib.watch(...)``), as the in-process
    ``WatchHandle``: ``info`` (the registration; its ``vector`` is the query vector sent,
    empty for a text query), ``events()``, ``close()``."""

    def __init__(self, http: Http, watch: Watch) -> None:
        super().__init__(http.url, http.api_key, watch)
        self._http = http
        http.watches.add(self)

    def __repr__(self) -> str:
        return _describe(self.info, "RemoteWatch")

    def events(
        self, since: str | None = None, *, timeout: float | None = None
    ) -> RemoteWatchEvents:
        """The watch's events: ``watch.ready`` (the results now, and the change event id they
        are consistent at) and then every change of them; with ``since`` (a watch event id),
        the events after it, or a ``stream.reset`` and a fresh ``watch.ready`` when they are
        no longer kept. Open when this returns: raises ``WatchNotFoundError`` once the watch
        is closed."""
        return RemoteWatchEvents(self._http, self.id, self._path + "/events", since, timeout)

    def close(self) -> None:
        """Remove the watch (its open ``events()`` iterators end with a ``stream.closed``).
        Idempotent."""
        if self._closing():
            self._http.watches.discard(self)
            with contextlib.suppress(NotFoundError):  # already gone (its library deleted)
                self._http.run(_calls.delete_watch(self.info.library_id, self.id))

    def _abandon(self) -> None:
        """Remove the watch as the client closes: one try, errors ignored."""
        self._forget()

    def __enter__(self) -> RemoteWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRemoteWatch(_Handle):
    """``RemoteWatch`` for code on an event loop: ``async for event in w.events()``,
    ``await w.close()``."""

    def __init__(self, http: AsyncHttp, watch: Watch) -> None:
        super().__init__(http.url, http.api_key, watch)
        self._http = http
        http.watches.add(self)

    def __repr__(self) -> str:
        return _describe(self.info, "AsyncRemoteWatch")

    def events(
        self, since: str | None = None, *, timeout: float | None = None
    ) -> AsyncRemoteWatchEvents:
        """``RemoteWatch.events``; being opened when this returns (every later request of
        the client waits until it is registered); a refusal is raised by the first
        iteration."""
        return AsyncRemoteWatchEvents(self._http, self.id, self._path + "/events", since, timeout)

    async def close(self) -> None:
        if self._closing():
            self._http.watches.discard(self)
            with contextlib.suppress(NotFoundError):
                await self._http.run(_calls.delete_watch(self.info.library_id, self.id))

    async def _abandon(self) -> None:
        """Remove the watch as the client closes: one try, errors ignored."""
        if self._closing():
            with contextlib.suppress(Exception):
                await self._http.client.delete(self._path, timeout=FORGET_TIMEOUT)

    async def __aenter__(self) -> AsyncRemoteWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
