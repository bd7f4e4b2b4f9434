"""End-to-end fixtures: a real arrwDB server (uvicorn + ``create_app``) on a free loopback port,
run in a background thread, and shut down through the graceful drain afterwards; and a cluster
of such servers over one PostgreSQL schema (``cluster``)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

import pg
from arrwdb.config import Settings
from arrwdb.container import Container, build_container
from arrwdb.server import BackgroundServer


def start_server(**overrides: Any) -> BackgroundServer:
    return BackgroundServer(Settings(**overrides), log_level="warning").start()


@pytest.fixture(scope="session")
def server() -> Iterator[BackgroundServer]:
    """One server shared by the tests that don't need their own settings."""
    live = start_server()
    yield live
    live.stop()


@pytest.fixture
def make_server() -> Iterator[Callable[..., BackgroundServer]]:
    """Start servers with their own settings; each is stopped after the test."""
    started: list[BackgroundServer] = []

    def make(**overrides: Any) -> BackgroundServer:
        live = start_server(**overrides)
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


@dataclass
class Node:
    """One server of a ``cluster``: a whole arrwDB (its own container: store, projection, hub,
    transports) on its own loopback port, in this process."""

    server: BackgroundServer
    container: Container

    @property
    def url(self) -> str:
        return self.server.url

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0)


@pytest.fixture
def cluster(pg_schema: str) -> Iterator[Callable[..., Node]]:
    """Start servers on one fresh PostgreSQL schema (skips without PostgreSQL); each is
    stopped after the test."""
    nodes: list[Node] = []

    def start(**overrides: Any) -> Node:
        options: dict[str, Any] = {
            "storage": "postgres",
            "postgres_url": pg.url(),
            "postgres_schema": pg_schema,
            "postgres_poll_interval": 0.1,
            **overrides,
        }
        settings = Settings(**options)
        container = build_container(settings)
        server = BackgroundServer(settings, container=container, log_level="warning").start()
        node = Node(server, container)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.server.stop()
        node.container.shutdown_resources()


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as client:
        yield client


def create_library(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": f"lib-{uuid.uuid4().hex[:12]}", **fields}
    response = client.post("/v1/libraries", json=body)
    assert response.status_code == 201, response.text
    library: dict[str, Any] = response.json()
    return library


async def acreate_library(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": f"lib-{uuid.uuid4().hex[:12]}", **fields}
    response = await client.post("/v1/libraries", json=body)
    assert response.status_code == 201, response.text
    library: dict[str, Any] = response.json()
    return library


async def alibrary_id(server: BackgroundServer, **fields: Any) -> str:
    """A fresh library on ``server``."""
    async with httpx.AsyncClient(base_url=server.url) as client:
        return str((await acreate_library(client, **fields))["id"])


@pytest.fixture
def library(http: httpx.Client) -> dict[str, Any]:
    """A fresh library on the shared server."""
    return create_library(http)


class ErrorLog(logging.Handler):
    """Collects the ERROR records of the server's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(n) for n in ("arrwdb", "uvicorn.error", "litestar")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- REST helpers ---------------------------------------------------------------------------

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["type"], str)
    assert body["type"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def add_text(http: httpx.Client, lib: str, title: str, text: str, **extra: Any) -> dict[str, Any]:
    response = http.post(
        f"/v1/libraries/{lib}/documents", json={"title": title, "text": text, **extra}
    )
    assert response.status_code == 201, response.text
    doc: dict[str, Any] = response.json()
    return doc


def metric_samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample of a Prometheus exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# -- WebSocket helpers ----------------------------------------------------------------------


def ws_url(server: BackgroundServer, library_id: str) -> str:
    return f"{server.ws_url}/v1/libraries/{library_id}/ws"


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        message: dict[str, Any] = json.loads(await ws.recv())
    return message


async def recv_type(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next message of type ``kind`` (skipping others)."""
    with anyio.fail_after(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == kind:
                return message  # type: ignore[no-any-return]


async def connect(server: BackgroundServer, library_id: str) -> tuple[ClientConnection, str]:
    ws = await ws_connect(ws_url(server, library_id))
    welcome = await recv(ws)
    assert welcome["type"] == "system"
    return ws, welcome["connection_id"]


def request(action: str, request_id: str | None, data: Any = None) -> str:
    message: dict[str, Any] = {"type": "request", "action": action, "request_id": request_id}
    if data is not None:
        message["data"] = data
    return json.dumps(message)
