"""Prometheus metrics: ``GET /metrics`` (the admin key, or a key for every library), or on a
port of its own (``metrics_port``, no key: bind it where only the scraper reaches).

Per request, the middleware counts the answer (route template, method, status) and times it;
everything else is read when scraped (``_Collector``): open WebSocket connections and SSE
streams, events delivered, slow consumers cut, requests refused for the rate, API key
refusals, watch events delivered (counted in ``Runtime.counters`` as plain integers: no lock on
the hot path), the live watches of each library, and what
the service and its store measure of themselves (the last event applied, vectors per
library's index, WAL fsync latency, follower lag). ``docs/operations.md`` lists every metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from litestar import Request, Response, Router, get
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from arrwdb.domain.access import Need
from arrwdb.transports.guard import caller_of
from arrwdb.transports.runtime import Runtime, RuntimeDep

logger = logging.getLogger("arrwdb.metrics")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    """The metrics of one app, in a registry of its own (several apps may share a process)."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "arrwdb_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "arrwdb_http_request_duration_seconds",
            "Time to answer an HTTP request (until the response starts), by route and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry.register(_Collector(runtime))
        ProcessCollector(namespace="arrwdb", registry=self.registry)
        self._server: Any = None

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        child = self._children.get(key)
        if child is None:
            child = (
                self._requests.labels(route, method, str(status)),
                self._latency.labels(route, method),
            )
            self._children[key] = child
        child[0].inc()
        child[1].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve_on(self, host: str, port: int) -> None:
        """Serve ``/metrics`` on a port of its own (a thread), until :meth:`stop`."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        logger.info("metrics on http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def middleware(self, app: Any) -> Any:
        """Counts and times every HTTP request of the routes it wraps."""
        metrics = self

        async def measured(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def sending(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    metrics.observe(
                        scope.get("path_template", "unmatched"),
                        scope["method"],
                        status,
                        time.perf_counter() - started,
                    )
                await send(message)

            await app(scope, receive, sending)

        return measured


class _Collector(Collector):
    """What is read at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self._runtime
        yield _gauge(
            "arrwdb_websocket_connections",
            "Open WebSocket connections.",
            len(runtime.connections.all()),
        )
        yield _gauge("arrwdb_sse_streams", "Open Server-Sent Events streams.", len(runtime.streams))
        for name, help_text, label, counts in runtime.counters.families():
            counter = CounterMetricFamily(name, help_text, labels=[label])
            for value_of_label, value in counts.items():
                counter.add_metric([value_of_label], value)
            yield counter
        try:
            measurements = runtime.service.measurements()
            watches = _watches(runtime)
        except Exception:  # not started, or the store is away: the rest is still served
            logger.debug("no service measurements", exc_info=True)
            return
        yield watches
        families: dict[str, Any] = {}
        for m in measurements:
            labels = [k for k, _ in m.labels]
            label_values = [v for _, v in m.labels]
            family = families.get(m.name)
            if family is None:
                kind = {"counter": CounterMetricFamily, "histogram": HistogramMetricFamily}.get(
                    m.kind, GaugeMetricFamily
                )
                family = families[m.name] = kind(m.name, m.help, labels=labels)
            if isinstance(family, HistogramMetricFamily):
                buckets = [(_bound(le), float(n)) for le, n in m.buckets]
                family.add_metric(label_values, buckets, m.value)
            else:
                family.add_metric(label_values, m.value)
        yield from families.values()


def _watches(runtime: Runtime) -> GaugeMetricFamily:
    """The live watches (live queries) of each library in this process."""
    family = GaugeMetricFamily(
        "arrwdb_watches", "Live watches (live queries), by library.", labels=["library_id"]
    )
    watching = runtime.service.watching
    for library in runtime.service.list_libraries():
        family.add_metric([library.id], len(watching.list(library.id)))
    return family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _bound(le: float) -> str:
    return "+Inf" if le == float("inf") else repr(le)


@get("/metrics", tags=["metrics"], include_in_schema=False)
async def metrics(runtime: RuntimeDep, request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text: the admin key, or a key for every library."""
    caller = caller_of(request.scope)
    caller.require(Need.EVERY_LIBRARY)
    exposition = runtime.metrics_exposition
    assert exposition is not None, "the app has no metrics"
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


def router() -> Router:
    return Router(path="/", route_handlers=[metrics])
