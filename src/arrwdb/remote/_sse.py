"""What the sync and the async change stream share: reading Server-Sent Events, where to resume,
and how long to wait before reconnecting."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from arrwdb.domain.errors import ArrwdbError, UnauthorizedError
from arrwdb.domain.events import STREAM_CLOSED, STREAM_RESET, Event
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


@dataclass
class Position:
    """Where a stream is: what to ask for when it reconnects, and which events it has given
    out already (so that none is given twice)."""

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

    def take(self, envelope: dict[str, Any]) -> Event | ArrwdbError | None:
        """The event to give out for ``envelope``, an error to raise, or ``None`` (nothing to
        give: a duplicate, or the server ending the stream for a reason the client handles by
        reconnecting)."""
        event = _wire.event(envelope)
        if event.type == STREAM_CLOSED:
            reason = event.data.get("reason")
            if reason == "unauthorized":
                return UnauthorizedError("the stream's API key was revoked")
            if reason == "slow_consumer":
                last = event.data.get("last_id")
                if isinstance(last, str) and last:
                    self.last = last
                return None  # resume from where it was cut: the server reads it from the log
            return None
        if event.type != STREAM_RESET and self.last is not None and _older(event.id, self.last):
            return None
        self.last = event.id
        return event


def _older(event_id: str, last: str) -> bool:
    try:
        return int(event_id) <= int(last)
    except ValueError:
        return False


#: Codes of refusals that can pass: a stream that meets one reconnects (after a pause).
PASSING = frozenset(
    {"unavailable", "shutting_down", "rate_limited", "lagging", "storage_error", "internal_error"}
)


def is_final(exc: BaseException) -> bool:
    """Whether a refused (re)connection is to be raised rather than retried: the key is gone,
    the library is deleted, the request is bad; not a restarting or overloaded server."""
    return isinstance(exc, ArrwdbError) and exc.code not in PASSING
