"""Change events: what every committed write publishes, and how a stream starts.

An event id is a decimal string of a strictly increasing integer (``"42"``). Clients treat it
as opaque and only echo it back to resume; inside arrwDB it is compared as an integer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.models import format_timestamp, utcnow

EventType = Literal[
    "library.created",
    "library.updated",
    "library.deleted",
    "document.added",
    "document.updated",
    "document.deleted",
]
EVENT_TYPES: Final[tuple[str, ...]] = (
    "library.created",
    "library.updated",
    "library.deleted",
    "document.added",
    "document.updated",
    "document.deleted",
)
#: Not a change: told to a subscriber whose starting point is no longer retained.
STREAM_RESET: Final = "stream.reset"
#: Not a change: the last event of a stream the server ends (SSE), with the reason.
STREAM_CLOSED: Final = "stream.closed"
#: ``stream.reset``'s ``reason``: the events after the requested id are no longer retained.
HISTORY_LOST: Final = "history_lost"

#: ``since="earliest"``: every event still retained.
EARLIEST: Final = "earliest"


@dataclass(frozen=True, slots=True)
class Event:
    """One committed change. ``data`` is JSON-ready (str/int/float/bool/None/list/dict)."""

    id: str
    type: str
    library_id: str | None
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: datetime = field(default_factory=utcnow)

    @property
    def seq(self) -> int:
        return int(self.id)

    def envelope(self) -> dict[str, Any]:
        """The spec's JSON envelope."""
        return {
            "id": self.id,
            "type": self.type,
            "library_id": self.library_id,
            "timestamp": format_timestamp(self.timestamp),
            "data": dict(self.data),
        }


@dataclass(frozen=True, slots=True)
class StartPoint:
    """Where a stream starts: after event ``after`` (``0`` = from the earliest retained),
    or live (``after is None``)."""

    after: int | None

    @classmethod
    def parse(cls, since: str | int | None) -> StartPoint:
        """Parse a client's ``since``: an event id, ``"earliest"``, or ``None`` (live)."""
        if since is None or since == "":
            return cls(None)
        if isinstance(since, int) and not isinstance(since, bool):
            value = since
        elif isinstance(since, str) and since.strip().lower() == EARLIEST:
            return cls(0)
        elif isinstance(since, str) and _is_event_id(since.strip()):
            value = int(since.strip())
        else:
            raise InvalidArgumentError(
                f"since must be an event id, 'earliest' or empty, not {since!r}", field="since"
            )
        if value < 0:
            raise InvalidArgumentError("since must not be negative", field="since")
        return cls(value)


def parse_event_id(value: object, field: str) -> int:
    """An event id given by a client (``"123"`` or ``123``) as a position. Raises
    ``InvalidArgumentError`` naming ``field``."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return value
    if isinstance(value, str) and (value == "0" or _is_event_id(value)):
        return int(value)
    raise InvalidArgumentError(
        f"{field} must be an event id (decimal digits), not {str(value)[:40]!r}", field=field
    )


def _is_event_id(text: str) -> bool:
    """ASCII digits only, at most 20 of them (a u64): ``int()`` would also take other scripts'
    digits and refuse (or take long over) thousands of them."""
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


def stream_reset(library_id: str | None, requested: int, earliest: int, resume_from: int) -> Event:
    """The one shape of a lost start point, on every way in (the library API and SSE send it
    as an event, the WebSocket as the ``data`` of a ``history_lost`` error response).

    ``requested`` is the id the client asked to resume after, ``earliest`` the oldest id still
    retained, ``resume_from`` the id the stream goes on after. The event's own id is
    ``resume_from``, so that resuming from it never replays anything."""
    return Event(
        id=str(resume_from),
        type=STREAM_RESET,
        library_id=library_id,
        data={
            "reason": HISTORY_LOST,
            "requested": str(requested),
            "earliest": str(earliest),
            "resume_from": str(resume_from),
        },
    )


def check_event_types(types: object) -> frozenset[str] | None:
    """Validate a ``types`` filter; ``None`` or empty means every type."""
    if types is None:
        return None
    if isinstance(types, str):
        types = [t for t in (p.strip() for p in types.split(",")) if t]
    if not isinstance(types, list | tuple | set | frozenset):
        raise InvalidArgumentError("types must be a list of event types", field="types")
    unknown = sorted(str(t) for t in types if t not in EVENT_TYPES)
    if unknown:
        raise InvalidArgumentError(
            f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}",
            field="types",
        )
    return frozenset(types) or None
