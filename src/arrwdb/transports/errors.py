"""The one table from errors to what clients see: HTTP status + problem details, WS error
responses, NDJSON error lines.

::

    exception                           HTTP  code
    domain PayloadTooLargeError           413  payload_too_large (metadata, text bytes)
    domain ValidationError (+ subclasses) 422  its own (dimension_mismatch, invalid_vector,
                                               invalid_filter, invalid_argument)
    msgspec.ValidationError (valid JSON,  422  the domain's for the same mistake
        wrong type, out of range,              (``envelopes.domain_error``): invalid_argument,
        unknown enum value, missing field)     invalid_vector for a vector, invalid_filter for
                                               a filter; ``field`` names the input
    a query parameter of the wrong type   422  invalid_argument   (``field`` names it)
    domain NotFoundError                  404  not_found
    domain AlreadyExistsError             409  already_exists
    msgspec.DecodeError (not JSON)        400  bad_request
    BadRequest                            400  bad_request
    PayloadTooLarge                       413  payload_too_large
    UnsupportedMediaType                  415  unsupported_media_type
    domain StorageError                   503  storage_error
    ShuttingDown                          503  shutting_down
    SubscriptionClosedError               503  subscription_closed / slow_consumer
    domain HistoryLostError               410  history_lost
    domain LaggingError                   503  lagging        (``Retry-After: 1``)
    domain UnauthorizedError              401  unauthorized   (``WWW-Authenticate: Bearer``)
    domain ForbiddenError                 403  forbidden
    domain RateLimitedError               429  rate_limited   (``Retry-After``)
    anything else                         500  internal_error   (logged with its traceback;
                                               the client gets an opaque message, never str(exc))

Litestar's own HTTP errors (unknown route, method not allowed, body too large, a bad query
parameter) are answered in the same problem format.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from arrwdb.domain.errors import (
    AlreadyExistsError,
    ArrwdbError,
    ForbiddenError,
    HistoryLostError,
    InternalError,
    InvalidArgumentError,
    LaggingError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    StorageError,
    SubscriptionClosedError,
    UnauthorizedError,
    ValidationError,
)
from arrwdb.transports.envelopes import domain_error
from arrwdb.transports.messages import Problem, encoder

logger = logging.getLogger("arrwdb.transports")

PROBLEM_JSON = "application/problem+json"
INTERNAL_MESSAGE = "internal server error; the incident was logged"


class TransportError(Exception):
    """A request the transport refuses before it reaches the service."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class BadRequest(TransportError):
    """The body or message is not what the endpoint reads (not JSON, not a request)."""


class PayloadTooLarge(TransportError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(TransportError):
    status = 415
    code = "unsupported_media_type"


class ShuttingDown(TransportError):
    status = 503
    code = "shutting_down"


@dataclass(frozen=True, slots=True)
class Fault:
    """What a client is told about a failure."""

    status: int
    code: str
    message: str
    field: str | None = None
    #: seconds to wait before retrying (``Retry-After``), when it helps
    retry_after: float | None = None

    def problem(self) -> Problem:
        return Problem(
            type=f"urn:arrwdb:problem:{self.code}",
            title=_title(self.status),
            status=self.status,
            detail=self.message,
            code=self.code,
            field=self.field,
        )


#: Domain error class -> HTTP status (most specific first; codes come from the class).
_DOMAIN_STATUS: tuple[tuple[type[ArrwdbError], int], ...] = (
    (PayloadTooLargeError, 413),
    (ValidationError, 422),
    (NotFoundError, 404),
    (AlreadyExistsError, 409),
    (StorageError, 503),
    (SubscriptionClosedError, 503),
    (HistoryLostError, 410),
    (LaggingError, 503),
    (UnauthorizedError, 401),
    (ForbiddenError, 403),
    (RateLimitedError, 429),
)

#: An absolute path in a message (a storage error's): clients are told the last part only.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s/:'\"]+/)+([^\s/:'\"]+)")

#: Where a request's parameters are (Litestar's ``ParamType`` values): not the body.
_PARAMETERS = frozenset({"path", "query", "header", "cookie"})
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "service_unavailable",
}


def classify(exc: BaseException) -> Fault:
    """Map any exception to a :class:`Fault`. Unexpected ones are logged with a traceback and
    become an opaque ``internal_error``."""
    if isinstance(exc, msgspec.ValidationError):  # valid JSON that a wire type refuses
        exc = domain_error(exc)
    if isinstance(exc, ArrwdbError) and not isinstance(exc, InternalError):
        for cls, status in _DOMAIN_STATUS:
            if isinstance(exc, cls):
                field = exc.details.get("field")
                message = exc.message
                if isinstance(exc, StorageError):  # the server's paths are its own business
                    message = _ABSOLUTE_PATH.sub(r"\1", message)
                return Fault(status, exc.code, message, field if isinstance(field, str) else None)
    if isinstance(exc, TransportError):
        return Fault(exc.status, exc.code, exc.message, exc.field)
    if isinstance(exc, msgspec.DecodeError):
        return Fault(400, "bad_request", f"not valid JSON: {exc}")
    if isinstance(exc, ValidationException):
        return _litestar_validation(exc)
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return Fault(exc.status_code, code, str(exc.detail))
    logger.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return Fault(500, "internal_error", INTERNAL_MESSAGE)


def _litestar_validation(exc: ValidationException) -> Fault:
    """What Litestar could not read: a parameter of the wrong type (``?limit=abc``), which the
    domain calls ``invalid_argument`` (as ``check_page_limit("abc")``), or a missing body."""
    extra: Any = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        first = extra[0]
        key = first.get("key")
        message = first.get("message") or str(exc.detail)
        if key and first.get("source") in _PARAMETERS:
            return Fault(422, InvalidArgumentError.code, f"{key}: {message}", str(key))
        if key == "data":  # Litestar's word for a body that is missing
            return Fault(400, "bad_request", "the request body is empty; send a JSON object")
        if key:
            return Fault(400, "bad_request", f"{key}: {message}", str(key))
        return Fault(400, "bad_request", str(message))
    return Fault(400, "bad_request", str(exc.detail))


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_response(fault: Fault, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=encoder.encode(fault.problem()),
        status_code=fault.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar exception handler: every error of every HTTP route, as problem details."""
    fault = classify(exc)
    headers = None
    if isinstance(exc, HTTPException) and exc.headers:
        headers = dict(exc.headers)
    elif isinstance(exc, LaggingError):
        headers = {"Retry-After": "1"}
    elif isinstance(exc, UnauthorizedError):
        headers = {"WWW-Authenticate": 'Bearer realm="arrwdb"'}
    elif isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return problem_response(fault, headers)


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {Exception: handle_exception}

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "BadRequest",
    "Fault",
    "PayloadTooLarge",
    "ShuttingDown",
    "TransportError",
    "UnsupportedMediaType",
    "classify",
    "handle_exception",
    "problem_response",
]
