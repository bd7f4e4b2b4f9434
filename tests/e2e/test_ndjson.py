"""NDJSON streaming ingest and batch search, against a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from arrwdb.server import BackgroundServer
from conftest import acreate_library, alibrary_id, create_library

pytestmark = pytest.mark.anyio

NDJSON = {"content-type": "application/x-ndjson"}


def lines_of(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def doc_line(title: str, **extra: Any) -> bytes:
    return json.dumps({"title": title, "text": f"{title} text", **extra}).encode() + b"\n"


async def test_ingest_slow_body_with_bad_lines_in_the_middle(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        lib = (await acreate_library(client))["id"]
        body = [
            doc_line("one"),
            b"this is not json\n",
            doc_line("two"),
            b'{"title": "no content"}\n',
            b"\n",  # blank: skipped, but it is line 5
            b'["an", "array"]\n',
            doc_line("three"),
        ]

        async def slowly() -> AsyncIterator[bytes]:
            for piece in body:
                # split each line in two writes: the server must reassemble lines
                yield piece[: len(piece) // 2]
                await anyio.sleep(0.02)
                yield piece[len(piece) // 2 :]

        response = await client.post(
            f"/v1/libraries/{lib}/documents/stream", content=slowly(), headers=NDJSON
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        answers = lines_of(response)
        summary = answers.pop()["summary"]
        assert [a["line"] for a in answers] == [1, 2, 3, 4, 6, 7]
        assert [a["success"] for a in answers] == [True, False, True, False, False, True]
        assert answers[1]["code"] == "bad_request"
        assert answers[3]["code"] == "invalid_argument"
        assert answers[4]["code"] == "invalid_argument"
        for answer in answers:
            if answer["success"]:
                assert answer["document_id"]
            else:
                assert isinstance(answer["error"], str)
        assert summary["received"] == 6
        assert summary["added"] == 3
        assert summary["failed"] == 3
        assert summary["took_ms"] > 0
        library = (await client.get(f"/v1/libraries/{lib}")).json()
        assert library["document_count"] == 3


class RawHTTP:
    """A bare HTTP/1.1 client on a TCP socket: it can read the response while it is still
    sending a chunked request body (httpx sends the whole body first)."""

    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def start(self, path: str, content_type: str) -> None:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        await self._stream.send(head.encode())

    async def send_chunk(self, data: bytes) -> None:
        await self._stream.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    async def end(self) -> None:
        await self._stream.send(b"0\r\n\r\n")

    async def _fill(self) -> None:
        self._buffer += await self._stream.receive()

    async def read_head(self) -> int:
        while b"\r\n\r\n" not in self._buffer:
            await self._fill()
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        assert b"transfer-encoding: chunked" in head.lower()
        return int(head.split(b" ")[1])

    async def read_line(self) -> dict[str, Any]:
        """The next NDJSON line of the chunked response (chunks may hold several lines)."""
        while True:
            decoded, rest = self._decode_chunks()
            if b"\n" in decoded:
                line, tail = decoded.split(b"\n", 1)
                self._buffer = self._encode(tail) + rest
                parsed: dict[str, Any] = json.loads(line)
                return parsed
            await self._fill()

    def _decode_chunks(self) -> tuple[bytes, bytes]:
        out, buf = b"", self._buffer
        while b"\r\n" in buf:
            size_line, after = buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(after) < size + 2:
                break
            out, buf = out + after[:size], after[size + 2 :]
        return out, buf

    @staticmethod
    def _encode(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n" if data else b""


async def test_ingest_answers_each_line_before_the_next_is_sent(server: BackgroundServer) -> None:
    lib = await alibrary_id(server)
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        raw = RawHTTP(stream)
        await raw.start(f"/v1/libraries/{lib}/documents/stream", "application/x-ndjson")
        await raw.send_chunk(doc_line("first"))
        with anyio.fail_after(5):
            assert await raw.read_head() == 200
            assert (await raw.read_line())["success"] is True
            await raw.send_chunk(b"{broken\n")
            bad = await raw.read_line()
            assert (bad["line"], bad["success"]) == (2, False)
            await raw.send_chunk(doc_line("third"))
            assert (await raw.read_line())["line"] == 3
            await raw.end()
            assert (await raw.read_line())["summary"]["added"] == 2


async def test_shutdown_ends_an_idle_ingest_stream_with_its_summary(make_server: Any) -> None:
    live: BackgroundServer = make_server(shutdown_timeout=5.0)
    lib = await alibrary_id(live)
    async with await anyio.connect_tcp("127.0.0.1", live.port) as stream:
        raw = RawHTTP(stream)
        await raw.start(f"/v1/libraries/{lib}/documents/stream", "application/x-ndjson")
        await raw.send_chunk(doc_line("only"))
        with anyio.fail_after(5):
            assert await raw.read_head() == 200
            assert (await raw.read_line())["success"] is True
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, live.stop)  # the client sends nothing more
            with anyio.fail_after(4):
                summary = await raw.read_line()
        assert summary["summary"]["added"] == 1
        assert anyio.current_time() - started < 4.5  # within the drain timeout


def test_fast_bulk_ingest_batches_and_isolates_bad_documents(make_server: Any) -> None:
    live = make_server(ndjson_batch=64)
    with httpx.Client(base_url=live.url, timeout=60) as http:
        lib = create_library(http, dimension=3, index="flat")["id"]
        lines = []
        bad = {
            17: b"{nope\n",
            150: b'{"title": "x", "chunks": [{"text": "a", "embedding": [1, 2]}]}\n',
        }
        bad[400] = json.dumps({"title": "dup", "id": "fixed-id", "text": "x"}).encode() + b"\n"
        for i in range(1, 1001):
            if i in bad:
                lines.append(bad[i])
            elif i == 399:
                lines.append(
                    json.dumps({"title": "orig", "id": "fixed-id", "text": "x"}).encode() + b"\n"
                )
            else:
                vector = [1.0, float(i), 0.5]
                chunk = {"text": f"chunk {i}", "embedding": vector, "metadata": {"i": i}}
                lines.append(json.dumps({"title": f"d{i}", "chunks": [chunk]}).encode() + b"\n")
        body = b"".join(lines).rstrip(b"\n")  # no newline after the last line
        response = http.post(f"/v1/libraries/{lib}/documents/stream", content=body, headers=NDJSON)
        answers = lines_of(response)
        summary = answers.pop()["summary"]
        assert [a["line"] for a in answers] == list(range(1, 1001))
        failed = {a["line"]: a["code"] for a in answers if not a["success"]}
        assert failed == {17: "bad_request", 150: "dimension_mismatch", 400: "already_exists"}
        assert (summary["received"], summary["added"], summary["failed"]) == (1000, 997, 3)
        assert http.get(f"/v1/libraries/{lib}").json()["document_count"] == 997


def test_oversize_line_is_reported_and_skipped(make_server: Any) -> None:
    live = make_server(max_body_bytes=1024)
    with httpx.Client(base_url=live.url) as http:
        lib = create_library(http)["id"]
        body = doc_line("small") + doc_line("huge" * 600) + doc_line("after")
        answers = lines_of(
            http.post(f"/v1/libraries/{lib}/documents/stream", content=body, headers=NDJSON)
        )
        assert [(a.get("line"), a.get("success"), a.get("code")) for a in answers[:3]] == [
            (1, True, None),
            (2, False, "payload_too_large"),
            (3, True, None),
        ]


def test_batch_search_stream(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        lib = create_library(http)["id"]
        for title, text in [("cats", "Cats purr and sleep."), ("dogs", "Dogs bark loudly.")]:
            http.post(f"/v1/libraries/{lib}/documents", json={"title": title, "text": text})
        queries = [
            {"query_text": "cats purr", "k": 1},
            {"query_text": "dogs bark", "k": 2},
            {"query_text": "x", "k": 0},
            "not json",
            {"query_text": "x", "filter": {"a": {"$bad": 1}}},
            {"query_text": "sleep", "k": 1},
        ]
        body = b"".join(
            (q if isinstance(q, str) else json.dumps(q)).encode() + b"\n" for q in queries
        )
        response = http.post(f"/v1/libraries/{lib}/search/stream", content=body, headers=NDJSON)
        assert response.status_code == 200
        answers = lines_of(response)
        assert [a["line"] for a in answers] == [1, 2, 3, 4, 5, 6]
        assert answers[0]["results"][0]["document_title"] == "cats"
        assert len(answers[1]["results"]) == 2
        assert answers[1]["results"][0]["document_title"] == "dogs"
        assert isinstance(answers[1]["took_ms"], float)
        assert [a.get("code") for a in answers[2:5]] == [
            "invalid_argument",
            "bad_request",
            "invalid_filter",
        ]
        assert answers[2]["field"] == "k"
        assert answers[5]["results"][0]["document_title"] == "cats"


def test_stream_errors_before_the_stream(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        lib = create_library(http)["id"]
        for path in ("documents/stream", "search/stream"):
            wrong_type = http.post(
                f"/v1/libraries/{lib}/{path}",
                content=doc_line("x"),
                headers={"content-type": "application/json"},
            )
            assert wrong_type.status_code == 415
            assert wrong_type.json()["code"] == "unsupported_media_type"
            missing = http.post(
                f"/v1/libraries/no-such-library/{path}", content=doc_line("x"), headers=NDJSON
            )
            assert missing.status_code == 404
            assert missing.headers["content-type"].startswith("application/problem+json")
