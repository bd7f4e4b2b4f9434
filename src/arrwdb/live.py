"""Live queries in process: what ``lib.watch(...)`` returns.

A ``WatchHandle`` owns its watch: ``close()`` (or leaving a ``with`` block, or dropping the
last reference to it) removes the watch. ``events()`` reads its events: ``watch.ready`` first,
then ``watch.entered`` / ``watch.left`` (top-k) or ``watch.match`` (match), in order; iterate
sync (``for``) or async (``async for``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Iterator

import anyio

from arrwdb.domain._watching import Watching
from arrwdb.domain.errors import SubscriptionClosedError, WatchNotFoundError
from arrwdb.domain.watches import Watch, WatchEvent, WatchListener, closed_event


class WatchEvents:
    """An iterator over one listener of a watch. Stops after ``timeout`` seconds without an
    event (``None``: never). When the watch ends for another reason than this handle's own
    ``close`` (deleted elsewhere, its library deleted, the database closing), the last event is
    a ``stream.closed`` whose ``data.reason`` says why."""

    def __init__(self, listener: WatchListener, library_id: str, timeout: float | None) -> None:
        self._listener = listener
        self._library_id = library_id
        self._timeout = timeout
        self._done = False

    @property
    def last_id(self) -> str | None:
        """The id of the last event read (to resume from with ``events(since=...)``)."""
        return self._listener.last_id

    def _ended(self) -> WatchEvent | None:
        if self._done:
            return None
        self._done = True
        reason = self._listener.closed_reason
        self._listener.close()
        if reason is None:  # this stream was closed by its reader
            return None
        return closed_event(self._library_id, self._listener.watch_id, reason, self.last_id)

    def poll(self) -> WatchEvent | None:
        """The next event if there is one now, without waiting (``None`` otherwise, and once
        the stream has ended)."""
        if self._done:
            return None
        try:
            return self._listener.poll()
        except SubscriptionClosedError:
            return self._ended()

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        if not self._done:
            try:
                event = self._listener.get(self._timeout)
            except SubscriptionClosedError:
                event = self._ended()
            else:
                if event is None:
                    self.close()
            if event is not None:
                return event
        raise StopIteration

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._agen()

    async def _agen(self) -> AsyncIterator[WatchEvent]:
        try:
            while not self._done:
                try:
                    event = await self._listener.aget(self._timeout)
                except SubscriptionClosedError:
                    event = self._ended()
                    if event is not None:
                        yield event
                    return
                if event is None:
                    return
                yield event
        finally:
            self.close()

    def close(self) -> None:
        self._done = True
        self._listener.close()

    def __enter__(self) -> WatchEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(watching: Watching, watch_id: str) -> None:
    with contextlib.suppress(WatchNotFoundError):  # already gone (its library was deleted)
        watching.stop(watch_id)


class WatchHandle:
    """A live query of one library (``lib.watch(...)``)."""

    def __init__(self, watching: Watching, watch: Watch) -> None:
        self._watching = watching
        self.info = watch
        self._finalizer = weakref.finalize(self, _stop, watching, watch.id)

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        kind = f"k={self.info.k}" if self.info.k is not None else f"threshold={self.info.threshold}"
        return f"<WatchHandle {self.id} {kind}>"

    def events(self, since: str | None = None, *, timeout: float | None = None) -> WatchEvents:
        """The watch's events: ``watch.ready`` (the results now, and the change event id they
        are consistent at) and then every change of them; with ``since`` (a watch event id),
        the events after it, or a ``stream.reset`` and a fresh ``watch.ready`` when they are
        no longer kept. Raises ``WatchNotFoundError`` once the watch is closed."""
        listener = self._watching.listen(self.id, since)
        return WatchEvents(listener, self.info.library_id, timeout)

    def close(self) -> None:
        """Remove the watch (its open ``events()`` iterators end). Idempotent."""
        self._finalizer()

    def __enter__(self) -> WatchHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncWatchHandle:
    """``WatchHandle`` for code on an event loop: ``async for event in w.events()``."""

    def __init__(self, handle: WatchHandle) -> None:
        self._h = handle

    @property
    def id(self) -> str:
        return self._h.id

    @property
    def info(self) -> Watch:
        return self._h.info

    def events(self, since: str | None = None, *, timeout: float | None = None) -> WatchEvents:
        return self._h.events(since, timeout=timeout)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._h.close)

    async def __aenter__(self) -> AsyncWatchHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
