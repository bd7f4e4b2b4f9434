"""The NDJSON transport: streaming ingest and streaming batch search.

Both routes answer while the body is still arriving, so each returns a small ASGI app
(:class:`_LineStream`) that owns both directions of the exchange: one task reads body chunks
and splits them into numbered lines (``n`` counts every line from 1; blank lines are skipped),
the other takes whatever lines are ready (up to ``settings.ndjson_batch``, without waiting to
fill a batch), runs them through the dispatcher in one worker-thread hop, and writes one answer
per line, in input order. A slow sender thus gets an answer per line; a fast one gets batches.
(Litestar's ``Stream`` response also listens on the request channel, and loses body chunks if a
generator reads the body at the same time: hence the raw ASGI app.)

Ingest adds a batch in one commit; if the commit is refused because of one document, the batch
is retried document by document so that only the bad lines fail. A bad line is reported
(``{"line": n, "success": false, "error", "code", "field"?}``) and skipped; the stream goes on,
and ends with ``{"summary": {"received", "added", "failed", "took_ms"}}``. A line longer than
``settings.max_body_bytes`` is answered with ``payload_too_large`` and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from litestar import Request, Router, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath
from litestar.types import ASGIApp, Receive, Scope, Send
from msgspec import UNSET

from arrwdb.domain.errors import AlreadyExistsError, LimitExceededError, ValidationError
from arrwdb.transports.dispatch import Written
from arrwdb.transports.envelopes import IngestLine, IngestSummary, IngestSummaryLine, SearchLine
from arrwdb.transports.errors import (
    PayloadTooLarge,
    ShuttingDown,
    UnsupportedMediaType,
    classify,
)
from arrwdb.transports.messages import DocumentIn, DocumentOut, SearchIn, decode, encoder
from arrwdb.transports.runtime import Runtime, RuntimeDep

logger = logging.getLogger("arrwdb.ndjson")

NDJSON = "application/x-ndjson"
NDJSON_TYPES = frozenset(
    {NDJSON, "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)


@dataclass(frozen=True, slots=True)
class _Line:
    n: int
    raw: bytes | None  # None: the line was longer than the limit


Batch = list[_Line]
#: Answers a batch: one encoded line (with its ``\n``) per input line, and the number added.
BatchHandler = Callable[[Runtime, str, Batch], Awaitable[tuple[bytes, int]]]


class _LineStream:
    """An ASGI app answering NDJSON lines while the request body is still arriving."""

    def __init__(self, runtime: Runtime, library_id: str, handler: BatchHandler, summary: bool):
        self._runtime = runtime
        self._library_id = library_id
        self._handler = handler
        self._summary = summary
        self._max_line = runtime.settings.max_body_bytes
        self._batch = max(1, runtime.settings.ndjson_batch)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", NDJSON.encode()),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        lines_in, lines_out = anyio.create_memory_object_stream[_Line](self._batch * 2)
        received = added = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_body, receive, lines_in)
            async with lines_out:
                async for first in lines_out:
                    batch = [first, *self._ready(lines_out)]
                    body, n_added = await self._answer(batch)
                    received += len(batch)
                    added += n_added
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    if self._runtime.closing:
                        logger.info("NDJSON stream stopped early: server shutting down")
                        tg.cancel_scope.cancel()
                        break
        tail = b""
        if self._summary:
            summary = IngestSummary(
                received=received,
                added=added,
                failed=received - added,
                took_ms=(time.perf_counter() - started) * 1000.0,
            )
            tail = encoder.encode(IngestSummaryLine(summary=summary)) + b"\n"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _answer(self, batch: Batch) -> tuple[bytes, int]:
        try:
            return await self._handler(self._runtime, self._library_id, batch)
        except Exception as exc:  # a bug: answer every line of the batch, keep streaming
            failed = [_failed(line.n, exc) for line in batch]
            return b"".join(encoder.encode(f) + b"\n" for f in failed), 0

    def _ready(self, lines: MemoryObjectReceiveStream[_Line]) -> list[_Line]:
        """The lines already read, up to a batch, without waiting for more."""
        more: list[_Line] = []
        while len(more) < self._batch - 1:
            try:
                more.append(lines.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream):
                break
        return more

    async def _read_body(self, receive: Receive, lines: MemoryObjectSendStream[_Line]) -> None:
        # the processor stopped reading lines (shutdown): nothing more to do
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._split_lines(receive, lines)

    async def _split_lines(self, receive: Receive, lines: MemoryObjectSendStream[_Line]) -> None:
        n = 0
        pending = bytearray()
        oversize = False
        async with lines:
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect: the client went away
                    return
                chunk: bytes = message.get("body", b"")
                more = message.get("more_body", False)
                start = 0
                while (end := chunk.find(b"\n", start)) >= 0:
                    n += 1
                    if oversize:
                        await lines.send(_Line(n, None))
                    elif pending:
                        pending += chunk[start:end]
                        if len(pending) > self._max_line:
                            await lines.send(_Line(n, None))
                        elif pending.strip():
                            await lines.send(_Line(n, bytes(pending)))
                    elif line := chunk[start:end]:
                        if len(line) > self._max_line:
                            await lines.send(_Line(n, None))
                        elif line.strip():
                            await lines.send(_Line(n, line))
                    pending.clear()
                    oversize = False
                    start = end + 1
                if not oversize:
                    pending += chunk[start:]
                    if len(pending) > self._max_line:  # don't buffer an endless line
                        oversize = True
                        pending.clear()
                if not more:
                    if oversize or pending.strip():
                        await lines.send(_Line(n + 1, None if oversize else bytes(pending)))
                    return


def _too_large(runtime: Runtime) -> PayloadTooLarge:
    limit = runtime.settings.max_body_bytes
    return PayloadTooLarge(f"line is longer than the limit of {limit} bytes")


async def _ingest(runtime: Runtime, library_id: str, batch: Batch) -> tuple[bytes, int]:
    answers: dict[int, IngestLine] = {}
    docs: list[DocumentIn] = []
    numbers: list[int] = []
    for line in batch:
        try:
            if line.raw is None:
                raise _too_large(runtime)
            docs.append(decode(DocumentIn, line.raw))
            numbers.append(line.n)
        except (msgspec.DecodeError, PayloadTooLarge, LimitExceededError) as exc:
            answers[line.n] = _failed(line.n, exc)
    if docs:
        results: list[Any]
        try:
            written = await runtime.dispatcher.write("add", library_id, docs)
            # one event per document, consecutive, in line order: each line gets its own
            first = int(written.event_id) - len(docs) + 1
            results = [Written(out, str(first + i)) for i, out in enumerate(written.result)]
        except (ValidationError, AlreadyExistsError):
            # one document spoiled the commit: add them one by one to find it
            results = await runtime.dispatcher.execute_each("add", library_id, docs)
        except Exception as exc:  # library gone, storage down, shutting down...
            results = [exc] * len(docs)
        for n, result in zip(numbers, results, strict=True):
            if isinstance(result, Written) and isinstance(result.result, DocumentOut):
                answers[n] = IngestLine(
                    line=n, success=True, document_id=result.result.id, event_id=result.event_id
                )
            else:
                answers[n] = _failed(n, result)
    ok = sum(1 for a in answers.values() if a.success)
    return b"".join(encoder.encode(answers[line.n]) + b"\n" for line in batch), ok


def _failed(n: int, exc: BaseException) -> IngestLine:
    fault = classify(exc)
    field = UNSET if fault.field is None else fault.field
    return IngestLine(line=n, success=False, error=fault.message, code=fault.code, field=field)


def _search_failed(n: int, exc: BaseException) -> SearchLine:
    fault = classify(exc)
    field = UNSET if fault.field is None else fault.field
    return SearchLine(line=n, success=False, error=fault.message, code=fault.code, field=field)


async def _search(runtime: Runtime, library_id: str, batch: Batch) -> tuple[bytes, int]:
    answers: dict[int, SearchLine] = {}
    queries: list[SearchIn] = []
    numbers: list[int] = []
    for line in batch:
        try:
            if line.raw is None:
                raise _too_large(runtime)
            queries.append(decode(SearchIn, line.raw))
            numbers.append(line.n)
        except (msgspec.DecodeError, PayloadTooLarge, LimitExceededError) as exc:
            answers[line.n] = _search_failed(line.n, exc)
    if queries:
        results = await runtime.dispatcher.execute_each("search", library_id, queries)
        for n, result in zip(numbers, results, strict=True):
            if isinstance(result, BaseException):
                answers[n] = _search_failed(n, result)
            else:
                answers[n] = SearchLine(
                    line=n, success=True, results=result.results, took_ms=result.took_ms
                )
    body = b"".join(encoder.encode(answers[line.n]) + b"\n" for line in batch)
    return body, sum(1 for a in answers.values() if a.success)


async def _open(request: Request[Any, Any, Any], runtime: Runtime, library_id: str) -> None:
    """Everything that can fail before the stream starts: 415, 503, 404."""
    media_type = request.content_type[0].strip().lower()
    if media_type and media_type not in NDJSON_TYPES:
        raise UnsupportedMediaType(f"content type {media_type!r} is not NDJSON; send {NDJSON}")
    if runtime.closing:
        raise ShuttingDown("the server is shutting down")
    await runtime.dispatcher.execute("get_library", library_id)


def _ndjson_body(item: str) -> type[Operation]:
    description = f"One {item} per line (`{NDJSON}`); the answers stream back line by line."

    class _Operation(Operation):
        def __post_init__(self) -> None:
            schema = Schema(type=OpenAPIType.STRING, description=description)
            self.request_body = RequestBody(
                content={NDJSON: OpenAPIMediaType(schema=schema)},
                description=description,
                required=True,
            )

    return _Operation


@post(
    "/v1/libraries/{library_id:str}/documents/stream",
    status_code=200,
    media_type=NDJSON,
    tags=["documents"],
    operation_class=_ndjson_body("document (as for `POST .../documents`)"),
)
async def ingest(
    request: Request[Any, Any, Any], runtime: RuntimeDep, library_id: FromPath[str]
) -> ASGIApp:
    """NDJSON ingest: `{"line": n, "success": ...}` per line, then `{"summary": {...}}`."""
    await _open(request, runtime, library_id)
    return _LineStream(runtime, library_id, _ingest, summary=True)


@post(
    "/v1/libraries/{library_id:str}/search/stream",
    status_code=200,
    media_type=NDJSON,
    tags=["search"],
    operation_class=_ndjson_body("search request (as for `POST .../search`)"),
)
async def search_stream(
    request: Request[Any, Any, Any], runtime: RuntimeDep, library_id: FromPath[str]
) -> ASGIApp:
    """NDJSON batch search: one search response (with `"line": n`) per line, in order."""
    await _open(request, runtime, library_id)
    return _LineStream(runtime, library_id, _search, summary=False)


def router() -> Router:
    """The NDJSON transport."""
    return Router(path="/", route_handlers=[ingest, search_stream])
