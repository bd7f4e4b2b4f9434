"""What the sync and the async streams (change streams and watch streams) share: reading
Server-Sent Events, where to resume, and how long to wait before reconnecting."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from arrwdb.domain.errors import (
    ArrwdbError,
    InvalidArgumentError,
    LibraryNotFoundError,
    UnauthorizedError,
    WatchNotFoundError,
)
from arrwdb.domain.events import STREAM_CLOSED, STREAM_RESET, Event
from arrwdb.domain.watches import (
    CLOSED_DELETED,
    CLOSED_EXPIRED,
    CLOSED_LIBRARY_DELETED,
    WatchEvent,
    parse_watch_event_id,
)
from arrwdb.remote import _wire

#: How many events a stream holds that the program has not read yet: beyond it, the reader
#: stops reading the connection until the program catches up (the server then keeps them).
BUFFER = 10_000
#: A connection on which nothing (no event, no keep-alive) arrives this long is taken as dead.
SILENCE = 60.0


class Parser:
    """Server-Sent Events lines in, the envelopes of whole events out."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            envelope = json.loads(data)
            return envelope if isinstance(envelope, dict) else None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None  # id and event repeat what the envelope says


@dataclass
class Backoff:
    """Exponential, with jitter (so that many clients of a restarted server do not all come
    back at the same instant): 0.1 s, 0.2 s, ... up to ``cap``, each taken at 50-100 %."""

    base: float = 0.1
    cap: float = 5.0
    attempt: int = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


class Envelope(Protocol):
    """What a stream gives out: a change ``Event`` or a ``WatchEvent``."""

    @property
    def id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def data(self) -> Mapping[str, Any]: ...


E = TypeVar("E", bound=Envelope)


@dataclass
class Position(Generic[E]):
    """Where a stream is: what to ask for when it reconnects, and which events it has given
    out already (so that none is given twice). The change stream's (``ChangePosition``) and a
    watch's (``WatchPosition``) differ in how they read an envelope, order ids, and end."""

    since: str | None
    #: the last event given out, or the stream's start point once the server has told it
    last: str | None = None
    types: str | None = None

    def started(self, header: str | None) -> None:
        """The connection is open; ``header`` is the server's start point (``Arrwdb-Event-Id``)."""
        if self.last is None and header:
            self.last = header

    def params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        since = self.last if self.last is not None else self.since
        if since is not None:
            params["since"] = since
        if self.types:
            params["types"] = self.types
        return params

    def take(self, envelope: dict[str, Any]) -> E | ArrwdbError | None:
        """The event to give out for ``envelope``, an error to raise, or ``None`` (nothing to
        give: a duplicate, or the server ending the stream for a reason the client handles by
        reconnecting)."""
        event = self.decode(envelope)
        if event.type == STREAM_CLOSED:
            return self.closed(event)
        if event.type == STREAM_RESET:
            return self.reset(event)
        if self.last is not None and self.older(event.id, self.last):
            return None
        self.last = event.id
        return event

    def decode(self, envelope: dict[str, Any]) -> E:
        raise NotImplementedError

    def older(self, event_id: str, last: str) -> bool:
        """Whether ``event_id`` was given out already (it is not after ``last``)."""
        raise NotImplementedError

    def reset(self, event: E) -> E:
        """A ``stream.reset``: the events after the start point were no longer kept."""
        self.last = event.id
        return event

    def closed(self, event: E) -> E | ArrwdbError | None:
        """The server ended the stream with ``event`` (``stream.closed``)."""
        reason = event.data.get("reason")
        if reason == "unauthorized":
            return UnauthorizedError("the stream's API key was revoked")
        if reason == "slow_consumer":
            last = event.data.get("last_id")
            if isinstance(last, str) and last:
                self.last = last
        return None  # resume from where it was cut: the server reads it from the log

    def final(self, item: E) -> bool:
        """Whether ``item`` is the stream's last: it is given out and the stream ends."""
        return False

    def refused(self, exc: ArrwdbError) -> ArrwdbError:
        """The error to raise for a refused (re)connection."""
        return exc


@dataclass
class ChangePosition(Position[Event]):
    """A change stream's position: event ids are integers."""

    def decode(self, envelope: dict[str, Any]) -> Event:
        return _wire.event(envelope)

    def older(self, event_id: str, last: str) -> bool:
        try:
            return int(event_id) <= int(last)
        except ValueError:
            return False


@dataclass
class WatchPosition(Position[WatchEvent]):
    """A watch stream's position: ids are watch event ids (``"42"``, ``"42.3"``). A
    ``stream.reset`` is followed by a fresh ``watch.ready`` of the same id, so it does not move
    the position (a reconnection in between asks again and gets both again). The watch's end
    (deleted, expired, its library deleted) is the stream's last event, as in process; the
    server stopping is a lost connection (the watch is kept: the stream reconnects)."""

    watch_id: str = ""

    def decode(self, envelope: dict[str, Any]) -> WatchEvent:
        return _wire.watch_event(envelope)

    def older(self, event_id: str, last: str) -> bool:
        try:
            return parse_watch_event_id(event_id) <= parse_watch_event_id(last)
        except InvalidArgumentError:
            return False

    def reset(self, event: WatchEvent) -> WatchEvent:
        return event

    def closed(self, event: WatchEvent) -> WatchEvent | ArrwdbError | None:
        if event.data.get("reason") in WATCH_ENDS:
            return event
        return super().closed(event)

    def final(self, item: WatchEvent) -> bool:
        return item.type == STREAM_CLOSED

    def refused(self, exc: ArrwdbError) -> ArrwdbError:
        if isinstance(exc, LibraryNotFoundError):  # the watch went with its library
            return WatchNotFoundError(self.watch_id)
        return exc


#: Why a watch ends for good (``stream.closed``'s ``reason``).
WATCH_ENDS = frozenset({CLOSED_DELETED, CLOSED_EXPIRED, CLOSED_LIBRARY_DELETED})


#: Codes of refusals that can pass: a stream that meets one reconnects (after a pause).
PASSING = frozenset(
    {"unavailable", "shutting_down", "rate_limited", "lagging", "storage_error", "internal_error"}
)


def is_final(exc: BaseException) -> bool:
    """Whether a refused (re)connection is to be raised rather than retried: the key is gone,
    the library is deleted, the request is bad; not a restarting or overloaded server."""
    return isinstance(exc, ArrwdbError) and exc.code not in PASSING
