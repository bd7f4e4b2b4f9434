"""The server: the Litestar app factory and a uvicorn server that shuts down gracefully.

``create_app(settings)`` builds the container (the composition root), and registers the
routers of the transports named in ``settings.transports`` (``ARRWDB_TRANSPORTS``; default all:
``rest``, ``ndjson``, ``sse``, ``websocket``) plus health, the API page (``/schema``) and,
with REST, the dashboard (``/ui``). A new transport is one module in
``arrwdb.transports`` with a ``router()`` function, and one entry in :data:`TRANSPORTS`.

Lifecycle: the app's lifespan opens the container's resources (loading the store) and, at the
end, drains the transports (new writes refused, SSE streams ended, WebSockets closed with 1001
after answering requests in flight, writes in flight finished) before closing them. Run under
:class:`Server` (what ``arrwdb serve`` does), the drain happens *before* uvicorn closes the
connections itself (which would close WebSockets with 1012 and wait on endless SSE streams).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from arrwdb._http_protocol import with_header_timeout
from arrwdb.config import Settings
from arrwdb.container import Container, build_container
from arrwdb.domain.errors import ArrwdbError
from arrwdb.transports import apidocs, keys, metrics, rest, sse, streaming, ui, ws
from arrwdb.transports.errors import EXCEPTION_HANDLERS
from arrwdb.transports.guard import Guard, is_loopback, redact_access_log
from arrwdb.transports.metrics import Metrics
from arrwdb.transports.runtime import Runtime

logger = logging.getLogger("arrwdb.server")

#: Transport name (as in ``Settings.transports``) -> its router factory.
TRANSPORTS: dict[str, Callable[[], Router]] = {
    "rest": rest.router,
    "ndjson": streaming.router,
    "sse": sse.router,
    "websocket": ws.router,
}


class StorageUnavailableError(RuntimeError):
    """The configured storage has no adapter in this build."""


class EmbedderUnavailableError(RuntimeError):
    """The default embedder is unknown, or cannot run here (its extra is missing)."""


def create_app(settings: Settings | None = None, *, container: Container | None = None) -> Litestar:
    """The arrwDB app. ``container`` (already built, maybe with overrides) is used as given
    and left open at shutdown; otherwise one is built from ``settings`` and owned."""
    settings = settings or Settings.from_env()
    owned = container is None
    if container is None:
        container = build_container(settings)
    _check_storage(container)
    _check_embedders(container)
    runtime = Runtime(settings)
    opened = container

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        try:
            await anyio.to_thread.run_sync(opened.init_resources)
        except ArrwdbError as exc:  # e.g. the data directory is locked by another server
            logger.error("cannot open the store: %s", exc)
            raise
        runtime.start(opened.service(), opened.keyring())
        if settings.metrics_port is not None:
            measured.serve_on(settings.host, settings.metrics_port)
        logger.info(
            "arrwDB ready: storage %s, transports %s",
            settings.storage,
            ", ".join(settings.transports),
        )
        try:
            yield
        finally:
            measured.stop()
            await runtime.drain(settings.shutdown_timeout)
            if owned:
                await anyio.to_thread.run_sync(opened.shutdown_resources)
            logger.info("arrwDB stopped")

    routers = [rest.health_router()] + [TRANSPORTS[name]() for name in settings.transports]
    public_pages, public_files = apidocs.PUBLIC_PAGES, [apidocs.PUBLIC_FILES]
    if "rest" in settings.transports:
        routers += [keys.router(), ui.router()]
        public_pages |= ui.PUBLIC_PAGES
        public_files.append(ui.PUBLIC_FILES)
    measured = Metrics(runtime)
    runtime.metrics_exposition = measured.exposition
    if settings.metrics_port is None:
        routers.append(metrics.router())
    guard = Guard(
        lambda: runtime.keys,
        counters=runtime.counters,
        limiter=runtime.limiter,
        bound_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        cors_origins=settings.cors_origins,
        public_pages=public_pages,
        public_files=tuple(public_files),
    )
    app = Litestar(
        route_handlers=routers,
        middleware=[measured.middleware, guard.middleware],
        dependencies={
            "runtime": Provide(lambda: runtime, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins))
        if settings.cors_origins
        else None,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="arrwDB",
            version=rest.VERSION,
            description="A vector database with real-time change streams. The WebSocket, "
            "SSE and NDJSON protocols are described in docs/protocol.md.",
            path=apidocs.PATH,
            render_plugins=[apidocs.SwaggerPage()],
            openapi_router=apidocs.router(),
        ),
        logging_config=None,
        state=State({"runtime": runtime}),
    )
    rest.without_bodies_on_204(app.openapi_schema)
    return app


def _check_storage(container: Container) -> None:
    storage = container.config.storage()
    available = container.store.providers
    if storage not in available:
        raise StorageUnavailableError(
            f"storage {storage!r} is not available in this build "
            f"(available: {', '.join(sorted(available))})"
        )


def _check_embedders(container: Container) -> None:
    """Make the embedders (the default one is made now: ``minilm`` reads its model), so that
    a default that cannot run stops the server before it starts."""
    try:
        container.embedders()
    except ArrwdbError as exc:
        raise EmbedderUnavailableError(f"the default embedder cannot be used: {exc}") from None


def runtime_of(app: Any) -> Runtime | None:
    """The transports' runtime of an app made by :func:`create_app`."""
    state = getattr(app, "state", None)
    runtime = getattr(state, "runtime", None) if state is not None else None
    return runtime if isinstance(runtime, Runtime) else None


class Server(uvicorn.Server):
    """uvicorn, draining arrwDB's transports before it closes connections at shutdown."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first
        runtime = runtime_of(self.config.app)
        if runtime is not None:
            await runtime.drain(runtime.settings.shutdown_timeout)
        await super().shutdown(sockets)


def uvicorn_config(app: Litestar | str, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn settings for arrwDB. A WebSocket message above ``max_ws_message_bytes`` gets an
    error response; one above twice that is refused by the protocol (close 1009).
    Per-message compression is off: it would cost CPU per subscriber, not per event. Keys
    given as ``?access_token=`` are hidden in the access log."""
    redact_access_log()
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        "log_config": None,
        "lifespan": "on",
        "ws_max_size": 2 * settings.max_ws_message_bytes,
        # messages read from the socket but not yet by the connection: few, as each may be big
        "ws_max_queue": 4,
        "ws_per_message_deflate": False,
        "http": with_header_timeout(settings.header_timeout),
        # connections (and requests in progress) at once; beyond it uvicorn answers 503
        "limit_concurrency": settings.max_connections or None,
        "timeout_graceful_shutdown": settings.shutdown_timeout + 5.0,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class AnonymousRefusedError(ValueError):
    """No admin key, and an address other than loopback."""


def check_exposure(settings: Settings) -> None:
    """Refuse to serve anyone who can reach the port without a key: with no admin key the
    server binds only to a loopback address, unless ``allow_anonymous``."""
    if settings.api_key or settings.allow_anonymous or is_loopback(settings.host):
        return
    raise AnonymousRefusedError(
        f"refusing to serve on {settings.host} without an API key: anyone who can reach it "
        "could read and delete every library. Set ARRWDB_API_KEY (or --api-key-file), or "
        "pass --allow-anonymous (ARRWDB_ALLOW_ANONYMOUS=1) to serve it open anyway"
    )


class WorkersRefusedError(ValueError):
    """``--workers`` with a store that one process owns."""


def serve(settings: Settings, workers: int = 1) -> bool:
    """Run arrwDB until SIGINT/SIGTERM, then shut down gracefully. False if it never started
    (the store could not be opened, the port was taken: the log says why). ``workers`` > 1
    runs that many processes on one port; they need a shared store (``postgres``)."""
    check_exposure(settings)
    if workers > 1:
        return _serve_workers(settings, workers)
    app = create_app(settings)
    server = Server(uvicorn_config(app, settings))
    server.run()
    return bool(server.started)


def _serve_workers(settings: Settings, workers: int) -> bool:
    """``workers`` processes forked after binding the port, each a whole server (its own
    projection and fan-out) over the shared store; a worker that dies is replaced."""
    if settings.storage != "postgres":
        raise WorkersRefusedError(
            f"--workers {workers} needs --storage postgres: with {settings.storage!r} storage "
            "each process would hold its own data (a data directory is opened by one process "
            "at a time), so the workers would not share libraries or the change stream"
        )
    import multiprocessing
    import signal

    sock = uvicorn_config("arrwdb.server:create_app", settings).bind_socket()
    context = multiprocessing.get_context("fork")  # the children inherit the bound socket
    stopping = threading.Event()

    def spawn(number: int) -> Any:
        process = context.Process(
            target=_worker, args=(settings, sock), name=f"arrwdb-worker-{number}"
        )
        process.start()
        return process

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [spawn(i) for i in range(workers)]
    ok = True
    try:
        while not stopping.wait(0.5):
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == _NEVER_STARTED:
                    logger.error("worker %d could not start; stopping", i)
                    ok = False
                    stopping.set()
                    break
                logger.warning("worker %d exited (%s); starting another", i, process.exitcode)
                processes[i] = spawn(i)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: a graceful shutdown
        for process in processes:
            process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return ok


_NEVER_STARTED = 3


def _worker(settings: Settings, sock: socket.socket) -> None:
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers with SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        app = create_app(settings)
    except (StorageUnavailableError, EmbedderUnavailableError) as exc:
        logger.error("%s", exc)
        sys.exit(_NEVER_STARTED)
    server = Server(uvicorn_config(app, settings))
    server.run(sockets=[sock])
    sys.exit(0 if server.started else _NEVER_STARTED)


class BackgroundServer:
    """arrwDB served from a background thread on a free loopback port: for tests and
    notebooks. ``with BackgroundServer(settings) as server: httpx.get(server.url + ...)``;
    leaving the block shuts it down gracefully (as SIGINT would)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        container: Container | None = None,
        port: int = 0,
        **uvicorn_overrides: Any,
    ) -> None:
        """``port``: 0 picks a free one (a given one lets a restarted server take the place
        of a stopped one)."""
        self.settings = settings or Settings.from_env()
        self.app = create_app(self.settings, container=container)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.settings.host, port))
        self.port: int = self._sock.getsockname()[1]
        self.server = Server(uvicorn_config(self.app, self.settings, **uvicorn_overrides))
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [self._sock]},
            name=f"arrwdb-server-{self.port}",
            daemon=True,
        )

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}"

    @property
    def runtime(self) -> Runtime:
        runtime = runtime_of(self.app)
        assert runtime is not None
        return runtime

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down gracefully and wait for the thread (idempotent)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
            if self.thread.is_alive():
                raise RuntimeError("the server did not shut down")
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
