"""The guard in front of every route: Host, API key and Origin, checked once per
request (or WebSocket handshake) before any handler runs.

1. **Host**: the ``Host`` header must name the bound host (any loopback name when bound to a
   loopback address) or one of ``allowed_hosts``; a server bound to every address (``0.0.0.0``)
   without ``allowed_hosts`` takes any. This stops DNS-rebinding pages reaching a local server.
2. **API key** (when the server has an admin key): ``Authorization: Bearer <key>``, or
   ``?access_token=<key>`` on SSE and WebSocket URLs (browsers cannot set headers there).
   ``GET /v1/health`` needs none, nor do the pages a browser opens before it has a key (the
   dashboard, the API page) and their files: they are static and hold no data (the pages fetch
   it with the key the user gives them), and a request for one is given a caller that may
   read nothing. The caller found is kept in the ASGI scope
   (:func:`caller_of`); what it may do is checked where the work is named: the dispatcher
   for every action, the stream handlers for streams (``Caller.require``).
3. **Origin**: a WebSocket handshake or a state-changing request (not GET/HEAD/OPTIONS) whose
   ``Origin`` is neither the server's own nor in ``cors_origins`` is refused
   (403 ``forbidden_origin``).

(That a body says it is JSON, 415 otherwise, is checked where bodies are read: ``_body``.)

HTTP refusals are problem details; a WebSocket handshake is accepted and closed with 4401
(no or a bad key), 4403 (a foreign origin or host) and a reason, as the protocol says.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import anyio
from litestar.types import ASGIApp, Receive, Send

from arrwdb.domain.access import ANYONE, Caller, KeyRing
from arrwdb.domain.errors import RateLimitedError, UnauthorizedError
from arrwdb.transports.errors import Fault
from arrwdb.transports.limits import RateLimiter

if TYPE_CHECKING:
    from arrwdb.transports.runtime import Counters
from arrwdb.transports.messages import encoder

logger = logging.getLogger("arrwdb.auth")

CALLER = "arrwdb.caller"
HEALTH = "/v1/health"
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN_LATER = 1013
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
#: a file under a public prefix: one plain name (no ``/``, no leading dot)
_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
#: who asks for a public page on a server with keys: someone who may read no library
_UNKEYED = Caller(key_id=None, libraries=frozenset())
#: A key unknown here may have just been made on another server sharing the store: look again,
#: at most this often.
_REFRESH_ON_MISS = 0.2


def caller_of(scope: Any) -> Caller:
    """The caller the guard found for this request (everyone may do everything on a server
    without an admin key, and where no guard ran)."""
    caller = scope.get(CALLER)
    return caller if isinstance(caller, Caller) else ANYONE


def client_of(scope: Any) -> str:
    """Who a request counts against for limits: its API key, or (on an open server) the
    client's address."""
    caller = caller_of(scope)
    if caller.key_id is not None:
        return "key:" + caller.key_id
    client = scope.get("client")
    return "address:" + (client[0] if client else "?")


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def host_names(bound: str, extra: tuple[str, ...]) -> frozenset[str] | None:
    """The host names a request may use (lower case, no port); ``None``: any."""
    if "*" in extra or (_is_wildcard(bound) and not extra):
        return None
    names = {h.lower() for h in extra}
    if is_loopback(bound):
        names |= _LOOPBACK_NAMES
    names.add(bound.lower())
    return frozenset(names)


def _host_name(host: str) -> str:
    """``host[:port]`` without the port (``[::1]:8000`` -> ``[::1]``), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """The checks above, configured once per app."""

    def __init__(
        self,
        keys: Callable[[], KeyRing],
        *,
        counters: Counters | None = None,
        limiter: RateLimiter | None = None,
        bound_host: str,
        allowed_hosts: tuple[str, ...] = (),
        cors_origins: tuple[str, ...] = (),
        public_pages: frozenset[str] = frozenset(),
        public_files: tuple[str, ...] = (),
    ) -> None:
        """``public_pages``: paths served without a key (GET/HEAD), besides health;
        ``public_files``: prefixes (ending in ``/``) under which one file name is served so."""
        self._keys = keys
        self._public_pages = public_pages | {HEALTH}
        self._public_files = public_files
        self._limiter = limiter
        self._counters = counters
        self._hosts = host_names(bound_host, allowed_hosts)
        self._any_origin = "*" in cors_origins
        self._origins = frozenset(o.rstrip("/").lower() for o in cors_origins)
        self._last_refresh = 0.0

    @property
    def keys(self) -> KeyRing:
        return self._keys()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        guard = self

        async def guarded(scope: Any, receive: Receive, send: Send) -> None:
            kind = scope["type"]
            if kind == "http" or kind == "websocket":
                refusal = await guard.check(scope)
                if refusal is not None:
                    guard.count(kind, refusal)
                    await _refuse(scope, receive, send, refusal)
                    return
            await app(scope, receive, send)

        return guarded

    def count(self, kind: str, refusal: Fault) -> None:
        if self._counters is None:
            return
        if refusal.status == 429:
            self._counters.rate_limited["websocket" if kind == "websocket" else "http"] += 1
        else:
            self._counters.refused[refusal.code] += 1

    async def check(self, scope: Any) -> Fault | None:
        """``None`` (and the caller put in the scope), or why the request is refused."""
        host = origin = authorization = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        websocket = scope["type"] == "websocket"
        method = "GET" if websocket else scope["method"]
        if method == "OPTIONS":
            return None  # a CORS preflight: answered by the CORS layer, carries no key
        if self._hosts is not None and (host is None or _host_name(host) not in self._hosts):
            return Fault(
                403 if websocket else 400,
                "invalid_host",
                f"the Host header {(host or '')[:100]!r} is not one this server answers to "
                "(allowed_hosts)",
                "Host",
            )
        path: str = scope["path"]
        if self.keys.enabled and not websocket and self._public(path, method):
            scope[CALLER] = _UNKEYED
        elif self.keys.enabled:
            secret = _bearer(authorization)
            if secret is None and (websocket or path.endswith("/events")):
                secret = _access_token(scope)
            try:
                scope[CALLER] = caller = await self._authenticate(secret)
            except UnauthorizedError as exc:
                logger.info("refused %s %s: %s", method, path, exc.message)
                return Fault(401, exc.code, exc.message)
            if websocket:
                logger.info("WebSocket handshake %s: key %s", path, caller.key_id or "none")
        if self._limiter is not None and not path.startswith(HEALTH):
            try:
                self._limiter.check(client_of(scope))
            except RateLimitedError as exc:
                return Fault(429, exc.code, exc.message, retry_after=exc.retry_after)
        if (
            origin is not None
            and (websocket or method not in _SAFE_METHODS)
            and not self._origin_allowed(origin, host)
        ):
            return Fault(
                403,
                "forbidden_origin",
                f"requests from origin {origin[:100]!r} are refused: not this server's own "
                "and not in cors_origins",
                "Origin",
            )
        return None

    def _public(self, path: str, method: str) -> bool:
        if method not in ("GET", "HEAD"):
            return False
        if path in self._public_pages:
            return True
        return any(
            path.startswith(prefix) and _FILE_NAME.fullmatch(path[len(prefix) :]) is not None
            for prefix in self._public_files
        )

    async def _authenticate(self, secret: str | None) -> Caller:
        try:
            return self.keys.authenticate(secret)
        except UnauthorizedError:
            now = time.monotonic()
            if (
                secret is None
                or not self.keys.shared
                or now - self._last_refresh < _REFRESH_ON_MISS
            ):
                raise
            self._last_refresh = now
            await anyio.to_thread.run_sync(self.keys.refresh)
            return self.keys.authenticate(secret)

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.rstrip("/").lower()
        if self._any_origin or origin in self._origins:
            return True
        if host is None:
            return False
        host = host.lower()
        return origin in (f"http://{host}", f"https://{host}")


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _access_token(scope: Any) -> str | None:
    query = scope.get("query_string", b"")
    if b"access_token" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1")):
        if name == "access_token":
            return value or None
    return None


async def _refuse(scope: Any, receive: Receive, send: Any, fault: Fault) -> None:
    if scope["type"] == "websocket":
        code = {401: CLOSE_UNAUTHORIZED, 429: CLOSE_TRY_AGAIN_LATER}.get(
            fault.status, CLOSE_FORBIDDEN
        )
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        reason = f"{fault.code}: {fault.message}".encode()[:120].decode(errors="ignore")
        await send({"type": "websocket.close", "code": code, "reason": reason})
        logger.info("WebSocket refused at the handshake: %d %s", code, fault.code)
        return
    headers = [(b"content-type", b"application/problem+json")]
    if fault.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="arrwdb"'))
    if fault.retry_after is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(fault.retry_after))).encode()))
    body = encoder.encode(fault.problem())
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": fault.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


_TOKEN = re.compile(r"(access_token=)[^&\s]*")


class RedactTokens(logging.Filter):
    """Hides ``access_token=`` values in logged request lines (uvicorn's access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and "access_token=" in a for a in record.args
        ):
            record.args = tuple(
                _TOKEN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def redact_access_log() -> None:
    """Install :class:`RedactTokens` on uvicorn's access logger (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
