"""Requests to an arrwDB server, retried while it is unreachable or restarting, and its
problem answers turned back into exceptions: ``Http`` (used by ``sync``) and ``AsyncHttp``
(used by ``aio``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from arrwdb.domain.errors import ArrwdbError
from arrwdb.remote import _calls, _wire
from arrwdb.remote._calls import Call
from arrwdb.remote._sse import Backoff

if TYPE_CHECKING:
    from arrwdb.remote._watches import AsyncRemoteWatch, RemoteWatch

T = TypeVar("T")

#: Answers worth retrying: the server is restarting, or behind (a write made elsewhere).
RETRY_CODES = frozenset({"shutting_down", "lagging", "unavailable"})
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 4


def headers_of(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": "arrwdb-python", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def error_of(response: httpx.Response) -> ArrwdbError:
    """The exception of an error answer (its problem details rebuilt)."""
    problem: Any = None
    try:
        problem = json.loads(response.content) if response.content else None
    except ValueError:
        problem = None
    exc = _wire.problem_error(
        response.status_code, problem if isinstance(problem, dict) else None, response.text[:500]
    )
    retry_after = response.headers.get("retry-after")
    if retry_after is not None and hasattr(exc, "retry_after"):
        with contextlib.suppress(ValueError):
            exc.retry_after = float(retry_after)
    return exc


def retry_delay(response: httpx.Response, backoff: Backoff) -> float | None:
    """How long to wait before trying ``response``'s request again, or ``None``: not again."""
    if response.status_code != 503:
        return None
    try:
        code = json.loads(response.content).get("code")
    except (ValueError, AttributeError):
        code = None
    if code not in RETRY_CODES:
        return None
    try:
        return min(5.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return backoff.next()


def unavailable(url: str, exc: Exception) -> _wire.ServerUnavailableError:
    return _wire.ServerUnavailableError(f"arrwDB at {url} is unavailable: {exc}")


class Http:
    """Requests to one server, retried (with backoff) while it is unreachable or restarting.
    A write carries an ``Idempotency-Key``, so a retried one is applied once."""

    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.client = httpx.Client(base_url=self.url, headers=headers_of(api_key), timeout=timeout)
        #: the watches made through this client and not closed yet (removed at its close)
        self.watches: weakref.WeakSet[RemoteWatch] = weakref.WeakSet()

    def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        write: bool = False,
        content_type: str = "application/json",
    ) -> httpx.Response:
        headers = {"Content-Type": content_type} if content is not None else {}
        if write:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        backoff = Backoff()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.client.request(
                    method, path, content=content, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if last:
                    raise unavailable(self.url, exc) from None
                time.sleep(backoff.next())
                continue
            if response.is_success:
                return response
            delay = None if last else retry_delay(response, backoff)
            if delay is None:
                raise error_of(response)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def run(self, call: Call[T]) -> T:
        content = None if call.body is None else _calls.body_bytes(call.body)
        response = self.send(
            call.method, call.path, content=content, params=call.params, write=call.write
        )
        return call.decode(response.json() if response.content else None)

    def close(self) -> None:
        self.client.close()


class AsyncHttp:
    """``Http`` for coroutines. Every request first waits for the change streams this client
    has just opened to be registered, so that a write made after ``lib.events()`` returned is
    in the stream (as it is in process)."""

    def __init__(self, url: str, api_key: str | None, timeout: float, retries: int) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.client = httpx.AsyncClient(
            base_url=self.url, headers=headers_of(api_key), timeout=timeout
        )
        self.opening: set[asyncio.Future[None]] = set()
        #: the watches made through this client and not closed yet (removed at its close)
        self.watches: weakref.WeakSet[AsyncRemoteWatch] = weakref.WeakSet()

    async def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        write: bool = False,
        content_type: str = "application/json",
    ) -> httpx.Response:
        if self.opening:
            await asyncio.wait(list(self.opening))
        headers = {"Content-Type": content_type} if content is not None else {}
        if write:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        backoff = Backoff()
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self.client.request(
                    method, path, content=content, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if last:
                    raise unavailable(self.url, exc) from None
                await asyncio.sleep(backoff.next())
                continue
            if response.is_success:
                return response
            delay = None if last else retry_delay(response, backoff)
            if delay is None:
                raise error_of(response)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def run(self, call: Call[T]) -> T:
        content = None if call.body is None else _calls.body_bytes(call.body)
        response = await self.send(
            call.method, call.path, content=content, params=call.params, write=call.write
        )
        return call.decode(response.json() if response.content else None)

    async def close(self) -> None:
        await self.client.aclose()
