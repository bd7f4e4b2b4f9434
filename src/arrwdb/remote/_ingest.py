"""Streaming ingest: documents sent as NDJSON while the answers for the lines already sent are
read back, one per line, as the server gives them.

An HTTP client that sends the whole body before it reads the answer (httpx, ``requests``)
shows the answers only at the end; here one connection is driven in both directions at once
(h11 for the HTTP/1.1 framing, ``select`` to send and receive as each side is ready), so a
progress bar moves with the server, and a slow server slows the sender instead of buffering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import httpx

from arrwdb.remote import _wire

#: Lines are sent in writes of about this size (a write per line would cost a syscall each).
_WRITE_BYTES = 64 * 1024
#: ... or what the documents gave within this long.
_FILL_SECONDS = 0.01


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The answer for one input line (``line`` counts from 1): the document's id and its
    event id, or why the line was refused (``error``, ``code``, ``field``)."""

    line: int
    success: bool
    document_id: str | None = None
    event_id: str | None = None
    error: str | None = None
    code: str | None = None
    field: str | None = None

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> IngestResult:
        return cls(
            line=int(d["line"]),
            success=bool(d["success"]),
            document_id=d.get("document_id"),
            event_id=d.get("event_id"),
            error=d.get("error"),
            code=d.get("code"),
            field=d.get("field"),
        )


def ndjson_line(document: Any) -> bytes:
    """One document as a line of the NDJSON ingest body."""
    return _wire.encode(_wire.document_body(document)) + b"\n"


def request_target(http_url: str, path: str, upsert: bool) -> tuple[httpx.URL, str]:
    url = httpx.URL(http_url)
    target = url.raw_path.decode().rstrip("/") + path + ("?upsert=true" if upsert else "")
    return url, target


def request_headers(url: httpx.URL, api_key: str | None) -> list[tuple[str, str]]:
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    headers = [
        ("Host", host),
        ("Content-Type", "application/x-ndjson"),
        ("Accept", "application/x-ndjson"),
        ("Transfer-Encoding", "chunked"),
        ("User-Agent", "arrwdb-python"),
    ]
    if api_key:
        headers.append(("Authorization", f"Bearer {api_key}"))
    return headers


class _Answers:
    """The answer's side of the exchange: h11 events in, results (and the summary) out."""

    def __init__(self) -> None:
        self.results: deque[IngestResult] = deque()
        self.summary: dict[str, Any] | None = None
        self.status: int | None = None
        self.finished = False
        self._partial = b""
        self._error_body = b""

    def take(self, conn: h11.Connection) -> None:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.Data):
                if self.status is not None and self.status >= 400:
                    self._error_body += bytes(event.data)[: 1 << 20]
                else:
                    self._lines(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.finished = True
                return

    def _lines(self, data: bytes) -> None:
        *whole, self._partial = (self._partial + data).split(b"\n")
        for raw in whole:
            if not raw.strip():
                continue
            line = json.loads(raw)
            if "summary" in line:
                self.summary = line["summary"]
            else:
                self.results.append(IngestResult.of(line))

    def error(self) -> Exception | None:
        if self.status is None or self.status < 400:
            return None
        try:
            problem = json.loads(self._error_body) if self._error_body else None
        except ValueError:
            problem = None
        text = self._error_body.decode(errors="replace")
        return _wire.problem_error(
            self.status, problem if isinstance(problem, dict) else None, text
        )


class Ingest:
    """``lib.ingest(documents)``: iterate for one ``IngestResult`` per document, in order, as
    the server answers; ``summary`` (``received``, ``added``, ``failed``, ``took_ms``) once
    the iteration has ended."""

    def __init__(
        self,
        http_url: str,
        api_key: str | None,
        path: str,
        documents: Iterable[Any],
        *,
        upsert: bool = False,
        timeout: float = 30.0,
    ) -> None:
        url, target = request_target(http_url, path, upsert)
        self._timeout = timeout
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            sock = socket.create_connection((url.host, port), timeout=timeout)
        except OSError as exc:
            raise _wire.ServerUnavailableError(
                f"arrwDB at {http_url} is unavailable: {exc}"
            ) from None
        if url.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=url.host)
        sock.setblocking(False)
        self._sock = sock
        self._conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="POST", target=target, headers=request_headers(url, api_key))
        self._out = bytearray(self._conn.send(request) or b"")
        self._documents: Iterator[Any] | None = iter(documents)
        self._answers = _Answers()

    @property
    def summary(self) -> dict[str, Any] | None:
        return self._answers.summary

    def __iter__(self) -> Iterator[IngestResult]:
        return self

    def __next__(self) -> IngestResult:
        answers = self._answers
        while not answers.results:
            if answers.finished:
                self.close()
                error = answers.error()
                if error is not None:
                    raise error
                raise StopIteration
            self._step()
        return answers.results.popleft()

    def _fill(self) -> None:
        """Take documents until a write's worth is ready, or the documents come slowly (then
        what is there goes now: a slow producer still sees its answers as it goes)."""
        until = time.monotonic() + _FILL_SECONDS
        while (
            self._documents is not None
            and len(self._out) < _WRITE_BYTES
            and (not self._out or time.monotonic() < until)
        ):
            try:
                doc = next(self._documents)
            except StopIteration:
                self._out += self._conn.send(h11.EndOfMessage()) or b""
                self._documents = None
                return
            line = ndjson_line(doc)
            self._out += self._conn.send(h11.Data(data=line)) or b""

    def _step(self) -> None:
        if self._conn.our_state is h11.SEND_BODY:
            self._fill()
        pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending()
        writing = [self._sock] if self._out else []
        readable, writable, _ = (
            ([self._sock], [], [])
            if pending
            else select.select([self._sock], writing, [], self._timeout)
        )
        if not readable and not writable:
            raise _wire.ServerUnavailableError(
                f"the server sent nothing for {self._timeout:g} s during an ingest"
            )
        if writable:
            try:
                sent = self._sock.send(self._out)
                del self._out[:sent]
            except (BlockingIOError, ssl.SSLWantWriteError):
                pass
            except OSError:  # the server stopped reading (it answers why, or closed)
                self._out.clear()
                self._documents = None
        if readable:
            try:
                data = self._sock.recv(256 * 1024)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            except OSError:
                data = b""
            self._conn.receive_data(data)
            self._answers.take(self._conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncIngest:
    """``Ingest`` for coroutines (``async for``): a task sends the lines while the iteration
    reads the answers."""

    def __init__(
        self,
        http_url: str,
        api_key: str | None,
        path: str,
        documents: Iterable[Any],
        *,
        upsert: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self._url, self._target = request_target(http_url, path, upsert)
        self._http_url = http_url
        self._api_key = api_key
        self._documents = documents
        self._timeout = timeout
        self._answers = _Answers()

    @property
    def summary(self) -> dict[str, Any] | None:
        return self._answers.summary

    def __aiter__(self) -> AsyncIterator[IngestResult]:
        return self._run()

    async def _run(self) -> AsyncIterator[IngestResult]:
        url, timeout = self._url, self._timeout
        port = url.port or (443 if url.scheme == "https" else 80)
        context = ssl.create_default_context() if url.scheme == "https" else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(url.host, port, ssl=context), timeout
            )
        except (OSError, TimeoutError) as exc:
            raise _wire.ServerUnavailableError(
                f"arrwDB at {self._http_url} is unavailable: {exc}"
            ) from None
        conn = h11.Connection(h11.CLIENT)
        answers = self._answers
        headers = request_headers(url, self._api_key)
        writer.write(
            conn.send(h11.Request(method="POST", target=self._target, headers=headers)) or b""
        )
        sender = asyncio.create_task(self._send(conn, writer))
        try:
            while True:
                while answers.results:
                    yield answers.results.popleft()
                if answers.finished:
                    break
                data = await asyncio.wait_for(reader.read(256 * 1024), timeout)
                conn.receive_data(data)
                answers.take(conn)
            error = answers.error()
            if error is not None:
                raise error
        finally:
            sender.cancel()
            writer.close()

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        buffered = 0
        try:
            for doc in self._documents:
                line = ndjson_line(doc)
                writer.write(conn.send(h11.Data(data=line)) or b"")
                buffered += len(line)
                if buffered >= _WRITE_BYTES:
                    await writer.drain()
                    buffered = 0
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except OSError:
            pass  # the server stopped reading: its answer says why
