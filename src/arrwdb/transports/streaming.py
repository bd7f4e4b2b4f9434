"""The NDJSON transport: streaming ingest and streaming batch search.

Both routes answer while the body is still arriving, so each returns a small ASGI app
(:class:`_LineStream`) that owns both directions of the exchange: one task reads body chunks
and splits them into numbered lines (``n`` counts every line from 1; blank lines are skipped),
the other takes whatever lines are ready (up to ``settings.ndjson_batch``, without waiting to
fill a batch), runs them through the dispatcher in one worker-thread hop, and writes one answer
per line, in input order. A slow sender thus gets an answer per line; a fast one gets batches.
(Litestar's ``Stream`` response also listens on the request channel, and loses body chunks if a
generator reads the body at the same time: hence the raw ASGI app.)

Ingest adds a batch in one commit (with ``?upsert=true``, lines with an ``id`` add or replace
the document of that id); if the commit is refused because of one document, the batch
is retried document by document so that only the bad lines fail. A bad line is reported
(``{"line": n, "success": false, "error", "code", "field"?}``) and skipped; the stream goes on,
and ends with ``{"summary": {"received", "added", "failed", "took_ms"}}``. A line longer than
``settings.max_body_bytes`` is answered with ``payload_too_large`` and skipped. A client that
does not take its answers for ``settings.ndjson_send_timeout`` seconds is dropped (and counted
in ``arrwdb_slow_consumers_cut``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from litestar import Request, Router, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, QueryParameter
from litestar.types import ASGIApp, Receive, Scope, Send
from msgspec import UNSET

from arrwdb.domain.access import Caller, Need
from arrwdb.domain.errors import AlreadyExistsError, LimitExceededError, ValidationError
from arrwdb.transports.dispatch import Written
from arrwdb.transports.envelopes import IngestLine, IngestSummary, IngestSummaryLine, SearchLine
from arrwdb.transports.errors import (
    PayloadTooLarge,
    ShuttingDown,
    UnsupportedMediaType,
    classify,
)
from arrwdb.transports.guard import caller_of
from arrwdb.transports.messages import (
    DocumentIn,
    DocumentOut,
    SearchIn,
    SearchOut,
    decode,
    encoder,
)
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
#: Answers a batch, in pieces sent as each is ready: encoded lines (each with its ``\n``,
#: one per input line, in order), how many of them succeeded, how many lines they answer.
Piece = tuple[bytes, int, int]
BatchHandler = Callable[["_LineStream", Batch], AsyncIterator[Piece]]
#: A search batch is answered in hops of at most this many bytes of encoded answers (and at
#: least one answer): what a client that does not read can make the server hold.
ANSWER_BUDGET = 4 * 1024 * 1024


class _LineStream:
    """An ASGI app answering NDJSON lines while the request body is still arriving."""

    def __init__(
        self,
        runtime: Runtime,
        library_id: str,
        caller: Caller,
        handler: BatchHandler,
        summary: bool,
    ):
        self.runtime = runtime
        self.library_id = library_id
        self.caller = caller
        self._handler = handler
        self._summary = summary
        self._max_line = runtime.settings.max_body_bytes
        self._batch = max(1, runtime.settings.ndjson_batch)
        self._reading = anyio.CancelScope()

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
        self.runtime.line_streams.add(self)
        try:
            await self._stream(receive, send, started, lines_in, lines_out)
        finally:
            self.runtime.line_streams.discard(self)

    def stop_reading(self) -> None:
        """At shutdown: read no more lines; those read are answered and the stream ends with
        its summary."""
        self._reading.cancel()

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        started: float,
        lines_in: MemoryObjectSendStream[_Line],
        lines_out: MemoryObjectReceiveStream[_Line],
    ) -> None:
        received = added = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_body, receive, lines_in)
            async with lines_out:
                async for first in lines_out:
                    batch = [first, *self._ready(lines_out)]
                    received += len(batch)
                    async for body, n_added in self._answer(batch):
                        added += n_added
                        if not await self._send(send, body):
                            tg.cancel_scope.cancel()  # the client is not reading: drop it
                            return
                    if self.runtime.closing:
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

    async def _send(self, send: Send, body: bytes) -> bool:
        """Send answers; False if the client did not take them within the send timeout."""
        with anyio.move_on_after(self.runtime.settings.ndjson_send_timeout):
            await send({"type": "http.response.body", "body": body, "more_body": True})
            return True
        self.runtime.counters.slow_consumers["ndjson"] += 1
        logger.info(
            "NDJSON stream (library %s) dropped: the client has not read its answers for %g s",
            self.library_id,
            self.runtime.settings.ndjson_send_timeout,
        )
        return False

    async def _answer(self, batch: Batch) -> AsyncIterator[tuple[bytes, int]]:
        """The handler's pieces; if it fails (a bug), the lines it has not answered fail."""
        answered = 0  # lines of the batch answered so far
        try:
            async for body, ok, lines in self._handler(self, batch):
                answered += lines
                yield body, ok
        except Exception as exc:  # a bug: answer the other lines of the batch, keep streaming
            failed = [_failed(line.n, exc) for line in batch[answered:]]
            yield b"".join(encoder.encode(f) + b"\n" for f in failed), 0

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
        with (
            self._reading,
            contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError),
        ):
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


async def _ingest(stream: _LineStream, batch: Batch, action: str = "add") -> AsyncIterator[Piece]:
    """``action``: ``add``, or ``upsert_many`` (``?upsert=true``: a line with an ``id`` adds
    or replaces the document of that id, one without is added)."""
    runtime, library_id, caller = stream.runtime, stream.library_id, stream.caller
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
            written = await runtime.dispatcher.write(action, library_id, docs, caller=caller)
            # one event per document, consecutive, in line order: each line gets its own
            first = int(written.event_id) - len(docs) + 1
            results = [Written(out, str(first + i)) for i, out in enumerate(written.result)]
        except (ValidationError, AlreadyExistsError):
            # one document spoiled the commit: add them one by one to find it
            results = await runtime.dispatcher.execute_each(action, library_id, docs, caller=caller)
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
    yield b"".join(encoder.encode(answers[line.n]) + b"\n" for line in batch), ok, len(batch)


def _failed(n: int, exc: BaseException) -> IngestLine:
    fault = classify(exc)
    field = UNSET if fault.field is None else fault.field
    return IngestLine(line=n, success=False, error=fault.message, code=fault.code, field=field)


def _search_failed(n: int, exc: BaseException) -> bytes:
    fault = classify(exc)
    field = UNSET if fault.field is None else fault.field
    line = SearchLine(line=n, success=False, error=fault.message, code=fault.code, field=field)
    return encoder.encode(line) + b"\n"


async def _search(stream: _LineStream, batch: Batch) -> AsyncIterator[Piece]:
    """Answers in input order, each encoded as soon as it is computed, sent in pieces of at
    most about ``ANSWER_BUDGET`` bytes: the answers of a batch are never all held at once."""
    pending = list(batch)
    while pending:
        answers: dict[int, tuple[bytes, bool]] = {}
        queries: list[SearchIn] = []
        numbers: list[int] = []
        for line in pending:
            try:
                if line.raw is None:
                    raise _too_large(stream.runtime)
                queries.append(decode(SearchIn, line.raw))
                numbers.append(line.n)
            except (msgspec.DecodeError, PayloadTooLarge, LimitExceededError) as exc:
                answers[line.n] = (_search_failed(line.n, exc), False)
        if queries:
            results = await stream.runtime.dispatcher.execute_each(
                "search",
                stream.library_id,
                queries,
                caller=stream.caller,
                then=functools.partial(_search_answer, numbers),
                budget=ANSWER_BUDGET,
            )
            # ``results`` may stop short (the budget): the rest goes in the next hop
            for n, result in zip(numbers, results, strict=False):
                if isinstance(result, BaseException):
                    answers[n] = (_search_failed(n, result), False)
                else:
                    answers[n] = (result, True)
        parts: list[bytes] = []
        ok = 0
        for line in pending:
            answer = answers.get(line.n)
            if answer is None:
                break
            parts.append(answer[0])
            ok += answer[1]
        yield b"".join(parts), ok, len(parts)
        pending = pending[len(parts) :]


def _search_answer(numbers: list[int], i: int, out: SearchOut) -> bytes:
    line = SearchLine(line=numbers[i], success=True, results=out.results, took_ms=out.took_ms)
    return encoder.encode(line) + b"\n"


async def _open(
    request: Request[Any, Any, Any], runtime: Runtime, library_id: str, caller: Caller, write: bool
) -> None:
    """Everything that can fail before the stream starts: 415, 403, 503, 404."""
    media_type = request.content_type[0].strip().lower()
    if media_type not in NDJSON_TYPES:
        shown = repr(media_type) if media_type else "missing"
        raise UnsupportedMediaType(
            f"content type {shown} is not NDJSON; send Content-Type: {NDJSON}",
            field="Content-Type",
        )
    caller.require(Need.WRITE if write else Need.READ, library_id)
    if runtime.closing:
        raise ShuttingDown("the server is shutting down")
    await runtime.dispatcher.execute("get_library", library_id, caller=caller)


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
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    library_id: FromPath[str],
    upsert: Annotated[
        bool,
        QueryParameter(
            description="A line with an `id` adds or replaces the document of that id "
            "(`document.added` or `document.updated`); a line without one is added."
        ),
    ] = False,
) -> ASGIApp:
    """NDJSON ingest: `{"line": n, "success": ...}` per line, then `{"summary": {...}}`."""
    caller = caller_of(request.scope)
    await _open(request, runtime, library_id, caller, write=True)
    handler = functools.partial(_ingest, action="upsert_many") if upsert else _ingest
    return _LineStream(runtime, library_id, caller, handler, summary=True)


@post(
    "/v1/libraries/{library_id:str}/search/stream",
    status_code=200,
    media_type=NDJSON,
    tags=["search"],
    operation_class=_ndjson_body("search request (as for `POST .../search`)"),
)
async def search_stream(
    request: Request[Any, Any, Any],
    runtime: RuntimeDep,
    library_id: FromPath[str],
) -> ASGIApp:
    """NDJSON batch search: one search response (with `"line": n`) per line, in order."""
    caller = caller_of(request.scope)
    await _open(request, runtime, library_id, caller, write=False)
    return _LineStream(runtime, library_id, caller, _search, summary=False)


def router() -> Router:
    """The NDJSON transport."""
    return Router(path="/", route_handlers=[ingest, search_stream])
