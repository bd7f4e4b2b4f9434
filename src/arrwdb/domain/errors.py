"""The one error tree of arrwDB.

Every error a caller can act on is an :class:`ArrwdbError` with a stable, machine-readable
``code``. The same codes appear in HTTP problem details, WebSocket error responses and
in-process exceptions; transports map the classes below to statuses in one table.

::

    ArrwdbError                      code
    ├── ValidationError              validation_error     input breaks a rule (HTTP 422)
    │   ├── DimensionMismatchError   dimension_mismatch   vector of the wrong length
    │   ├── InvalidVectorError       invalid_vector       NaN/inf, not 1-d, empty
    │   ├── InvalidFilterError       invalid_filter       unknown operator, bad operand
    │   ├── InvalidArgumentError     invalid_argument     k out of range, bad name, ...
    │   ├── LimitExceededError       limit_exceeded       beyond a limit: JSON or filter depth
    │   ├── PayloadTooLargeError     payload_too_large    metadata or text beyond its byte limit
    │   ├── EmbedderRequiredError    embedder_required    text on a vectors-only library
    │   └── IdempotencyMismatchError idempotency_mismatch an idempotency key reused differently
    ├── NotFoundError                not_found            (HTTP 404)
    │   ├── LibraryNotFoundError     not_found
    │   └── DocumentNotFoundError    not_found
    ├── AlreadyExistsError           already_exists       duplicate library name (HTTP 409)
    ├── SubscriptionClosedError      subscription_closed  a change stream was closed
    │   └── SlowConsumerError        slow_consumer        its unread events are gone; resume
    ├── HistoryLostError             history_lost         changes after an id are no longer kept
    ├── UnauthorizedError            unauthorized         no key, or an unknown or revoked one
    ├── ForbiddenError               forbidden            the key does not give that access
    ├── RateLimitedError             rate_limited         too many requests: retry after a while
    ├── LaggingError                 lagging              a read's min_event_id is not applied yet
    ├── StorageError                 storage_error        the store cannot complete a write
    └── InternalError                internal_error       a bug; details are logged, never sent
"""

from __future__ import annotations

from typing import Any, ClassVar


class ArrwdbError(Exception):
    """Base of every arrwDB error. ``code`` is stable; ``message`` is for humans."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ValidationError(ArrwdbError):
    """The input is well-formed but breaks a rule of the domain."""

    code = "validation_error"


class DimensionMismatchError(ValidationError):
    """A vector's length differs from its library's dimension."""

    code = "dimension_mismatch"

    def __init__(self, expected: int, got: int, *, what: str = "vector") -> None:
        super().__init__(
            f"{what} has dimension {got}, but the library's dimension is {expected}",
            expected=expected,
            got=got,
        )


class InvalidVectorError(ValidationError):
    """A vector contains NaN or infinity, is empty, or is not one-dimensional."""

    code = "invalid_vector"


class InvalidFilterError(ValidationError):
    """A metadata filter uses an unknown operator or a bad operand."""

    code = "invalid_filter"


class InvalidArgumentError(ValidationError):
    """An argument is out of range or of the wrong kind (``k``, ``ef``, a name, ...)."""

    code = "invalid_argument"


class NotFoundError(ArrwdbError):
    """The named library or document does not exist."""

    code = "not_found"


class LibraryNotFoundError(NotFoundError):
    def __init__(self, library: str) -> None:
        super().__init__(f"library {library!r} not found", library=library)


class DocumentNotFoundError(NotFoundError):
    def __init__(self, document_id: str, library_id: str | None = None) -> None:
        where = f" in library {library_id!r}" if library_id else ""
        super().__init__(f"document {document_id!r} not found{where}", document_id=document_id)


class WatchNotFoundError(NotFoundError):
    def __init__(self, watch_id: str, library_id: str | None = None) -> None:
        where = f" in library {library_id!r}" if library_id else ""
        super().__init__(f"watch {watch_id!r} not found{where}", watch_id=watch_id)


class AlreadyExistsError(ArrwdbError):
    """A library with that name (or a document with that id) already exists."""

    code = "already_exists"


class SubscriptionClosedError(ArrwdbError):
    """The change stream was closed (by the server shutting down or the consumer)."""

    code = "subscription_closed"


class SlowConsumerError(SubscriptionClosedError):
    """The subscriber was cut off for its own backlog: events it had still to read are no
    longer kept, or more of them wait unread than its ``buffer`` allows.

    Events up to ``last_event_id`` were delivered; resume with ``since=last_event_id``.
    """

    code = "slow_consumer"


class HistoryLostError(ArrwdbError):
    """The changes (or events) after a position are no longer kept: a reader that wanted them
    must resynchronise (``earliest`` is the oldest position still kept)."""

    code = "history_lost"

    def __init__(self, after: int, earliest: int) -> None:
        super().__init__(
            f"the changes after {after} are no longer kept (the oldest kept is {earliest})",
            after=after,
            earliest=earliest,
        )
        self.after = after
        self.earliest = earliest


class _BeyondALimit(ValidationError):
    """An input beyond a limit of the server; ``limit`` names it."""

    def __init__(self, message: str, *, limit: str, field: str | None = None) -> None:
        super().__init__(message, limit=limit, field=field)


class LimitExceededError(_BeyondALimit):
    """An input beyond one of the server's limits (``limit`` names it: JSON depth, filter
    depth, dimension, libraries, ...)."""

    code = "limit_exceeded"


class PayloadTooLargeError(_BeyondALimit):
    """An input larger than a byte limit (``limit`` names it: metadata, text); HTTP 413."""

    code = "payload_too_large"


class EmbedderRequiredError(ValidationError):
    """Text to embed (a query, a document's text, a chunk without an embedding) on a library
    created without an embedder (vectors only)."""

    code = "embedder_required"

    def __init__(self, library: str, field: str) -> None:
        super().__init__(
            f"library {library!r} has no embedder (it takes vectors only): give {field} as a "
            "vector (query_vector, or an embedding for each chunk)",
            field=field,
        )


class IdempotencyMismatchError(ValidationError):
    """An idempotency key used again with a different request."""

    code = "idempotency_mismatch"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the idempotency key {key[:80]!r} was used with a different request",
            field="Idempotency-Key",
        )


class UnauthorizedError(ArrwdbError):
    """The server needs an API key and the request has none, or an unknown or revoked one."""

    code = "unauthorized"


class ForbiddenError(ArrwdbError):
    """The request's API key does not give the access the request needs."""

    code = "forbidden"


class RateLimitedError(ArrwdbError):
    """More requests than the limit allows; ``retry_after`` seconds until one is let in."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, limit: str) -> None:
        super().__init__(message, limit=limit)
        self.retry_after = retry_after


class LaggingError(ArrwdbError):
    """A read asked for the effects of an event this server has not applied yet, and waiting
    for it timed out (another server wrote it; this one is behind): retry shortly."""

    code = "lagging"

    def __init__(self, applied: int, wanted: int, waited: float) -> None:
        super().__init__(
            f"this server has applied events up to {applied}, not yet {wanted} "
            f"(waited {waited:g} s); retry",
            event_id=str(applied),
            min_event_id=str(wanted),
        )


class StorageError(ArrwdbError):
    """The store could not complete an operation; nothing of it was acknowledged."""

    code = "storage_error"


class InternalError(ArrwdbError):
    """An unexpected failure. The message sent to clients is opaque."""

    code = "internal_error"
