"""Fan-out benchmark: one library, many WebSocket and SSE subscribers, a writer that speeds up.

    python bench/fanout_bench.py                     # 1,000 WS + 100 SSE, 4 client processes
    python bench/fanout_bench.py --rates 10,20 --step-seconds 5 --ws 200 --sse 20   # a quick look

Starts a real server (``python -m arrwdb.cli serve --storage memory``) in its own process on a
free loopback port and creates one library. ``--procs`` client processes (asyncio) open the
WebSocket connections (``websockets``; each one waits for the welcome, sends ``subscribe`` and
waits for its response, as docs/protocol.md describes; ``--ws-client raw``: a minimal RFC 6455
client that costs the shared cores about half the CPU) and the SSE streams (``httpx``,
``GET /v1/libraries/{id}/events``, live). The parent then writes small documents over REST at
``--rates`` events/s, one step of ``--step-seconds`` each (paced open-loop: a slow answer does
not slow the next write), so that each write yields one ``document.added`` event.

Each subscriber checks that ids arrive in increasing order (exactly once, in order) and records,
per delivery, the receive time minus the event's ``timestamp`` (set by the server when the event
is made, just before it is published; every process reads the same clock). Per step:

* deliveries/s: deliveries of the step's events, WebSocket and SSE, divided by the step's time;
* lost: events of the step that some subscriber did not receive ``--drain`` seconds after the
  step ended (must be 0), plus out-of-order or duplicate deliveries and connections closed by
  the server (e.g. 4008, slow consumer);
* p50/p99/max publish-to-receive latency over all deliveries (and p99 per transport);
* the server's RSS (``VmRSS``, largest seen in the step) and CPU share, the clients' CPU share.

The step is held when p99 <= ``--p99-ms`` and nothing is lost. The run stops after the first
step that is not held (``--keep-going`` runs every step). Prints a Markdown table and writes
``bench/results/fanout-<time>.json`` and ``fanout-latest.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import sys
import time
from array import array
from collections.abc import Sequence
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, log, markdown_table, warn_if_busy, write_json
from _server import ServerProcess, cpu_seconds, rss_kib

TARGET_DELIVERIES = 20_000  # deliveries/s to WebSocket subscribers
TARGET_P99_MS = 200.0


def parse_args(argv: Sequence[str] | None = None) -> Any:
    p = base_parser(__doc__.split("\n\n")[0] if __doc__ else "fan-out benchmark")
    p.add_argument("--ws", type=int, default=1000, help="WebSocket subscribers")
    p.add_argument("--sse", type=int, default=100, help="SSE subscribers")
    p.add_argument("--procs", type=int, default=4, help="client processes")
    p.add_argument(
        "--ws-client",
        choices=("websockets", "raw"),
        default="websockets",
        help="WebSocket client: the websockets library, or a minimal RFC 6455 protocol",
    )
    p.add_argument("--rates", default="5,10,20,40,80,160", help="events/s, one step each")
    p.add_argument("--step-seconds", type=float, default=10.0, help="seconds per step")
    p.add_argument("--drain", type=float, default=3.0, help="seconds to wait after each step")
    p.add_argument("--p99-ms", type=float, default=TARGET_P99_MS, help="p99 limit of a held step")
    p.add_argument("--keep-going", action="store_true", help="run every step, held or not")
    p.add_argument("--max-inflight", type=int, default=64, help="writer: requests in flight")
    p.add_argument("--connect-timeout", type=float, default=90.0, help="seconds to connect all")
    p.add_argument("--server-log", default="warning", help="the server's --log-level")
    return p.parse_args(argv)


# -- the clients (each in its own process) ---------------------------------------------------


class Payload(msgspec.Struct):
    title: str = ""


class Incoming(msgspec.Struct):
    """A WebSocket frame or an SSE ``data``: only what the benchmark reads."""

    type: str = ""
    id: str | None = None
    timestamp: str | None = None
    data: Payload | None = None


_decode = msgspec.json.Decoder(Incoming).decode


class Progress:
    """Subscribers connected (or failed) in one client process."""

    def __init__(self, total: int) -> None:
        self.ws = self.sse = 0
        self.errors: list[str] = []
        self.total = total
        self.done = asyncio.Event()

    def bump(self) -> None:
        if self.ws + self.sse + len(self.errors) >= self.total:
            self.done.set()


class Recorder:
    """Per step: the delivery count of each event id, the latencies (ms) by transport."""

    def __init__(self) -> None:
        self.counts: dict[int, dict[int, int]] = {}
        self.lat: dict[tuple[int, str], array[float]] = {}
        self.seen: dict[int, tuple[int, float, str]] = {}  # id -> (step, publish time, title)
        self.new_ids: list[int] = []
        self.disorder = 0
        self.closed: dict[str, int] = {}

    def event(self, msg: Incoming, received: float, kind: str, last: int) -> int:
        """Record one delivery; return the id (the connection's new last id)."""
        if msg.id is None or msg.data is None:
            return last
        eid = int(msg.id)
        if eid <= last:
            self.disorder += 1
            return last
        info = self.seen.get(eid)
        if info is None:
            title = msg.data.title
            step = int(title[1 : title.index("-")]) if title.startswith("s") else -1
            published = datetime.fromisoformat(msg.timestamp or "").timestamp()
            info = self.seen[eid] = (step, published, title)
            self.new_ids.append(eid)
        step, published, _ = info
        counts = self.counts.get(step)
        if counts is None:
            counts = self.counts[step] = {}
        counts[eid] = counts.get(eid, 0) + 1
        key = (step, kind)
        lat = self.lat.get(key)
        if lat is None:
            lat = self.lat[key] = array("f")
        lat.append((received - published) * 1000.0)
        return eid

    def report(self) -> dict[str, Any]:
        """What arrived since the last report (then forgotten here)."""
        out = {
            "counts": self.counts,
            "lat": {f"{s}:{k}": v.tobytes() for (s, k), v in self.lat.items()},
            "events": {e: self.seen[e] for e in self.new_ids},
            "disorder": self.disorder,
            "closed": dict(self.closed),
        }
        self.counts, self.lat, self.new_ids = {}, {}, []
        return out


class RawWebSocket(asyncio.Protocol):
    """A minimal RFC 6455 client for the subscribers (``--ws-client raw``): the handshake, then
    unmasked server frames parsed straight from ``data_received`` (text, binary,
    continuation, ping answered with pong, close), no task per message. The ``websockets``
    client costs about twice the CPU per message, which the server's fan-out then competes
    with on the same cores."""

    def __init__(self, rec: Recorder, key: str) -> None:
        self.rec = rec
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.ready = False
        self.parts: list[bytes] = []
        self.last = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        # FIN + text, masked; a 7-bit or a 16-bit length (the requests here are short)
        length = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        head = b"\x81" + length
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(head + mask + body)

    def data_received(self, data: bytes) -> None:
        received = time.time()
        buf = self.buf
        buf += data
        if not self.handshake.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            if not head.startswith("HTTP/1.1 101"):
                self.handshake.set_exception(RuntimeError(head.split("\r\n", 1)[0]))
                return
            self.handshake.set_result(None)
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, pos = b1 & 0x7F, 2
            if b1 & 0x80:
                raise RuntimeError("a masked frame from the server")
            if n == 126:
                if len(buf) < 4:
                    return
                n, pos = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, pos = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            opcode = b0 & 0x0F
            if opcode == 0x8:  # close
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closed.done():
                    self.closed.set_result(str(code))
                assert self.transport is not None
                self.transport.close()
                return
            if opcode == 0x9:  # ping: pong, masked, same payload (short)
                assert self.transport is not None
                mask = os.urandom(4)
                body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                self.transport.write(bytes([0x8A, 0x80 | len(payload)]) + mask + body)
                continue
            if opcode == 0xA:
                continue
            self.parts.append(payload)
            if not b0 & 0x80:  # not the last fragment
                continue
            message = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
            self.parts = []
            if not self.ready:
                if not self.first.done():
                    self.first.set_result(message)
                continue
            msg = _decode(message)
            if msg.type == "event":
                self.last = self.rec.event(msg, received, "ws", self.last)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result("lost")
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("lost during the handshake"))


async def raw_ws_subscriber(url: str, rec: Recorder, gate: asyncio.Semaphore, ok: Progress) -> None:
    import base64

    rest = url.removeprefix("ws://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    key = base64.b64encode(os.urandom(16)).decode()
    loop = asyncio.get_running_loop()
    async with gate:
        _, proto = await loop.create_connection(lambda: RawWebSocket(rec, key), host, int(port))
        assert proto.transport is not None
        proto.transport.write(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await proto.handshake
        await proto.first  # the welcome
        proto.first = loop.create_future()
        proto.send_text('{"type":"request","action":"subscribe","request_id":"s","data":{}}')
        while _decode(await proto.first).type != "response":
            proto.first = loop.create_future()
        proto.ready = True  # from here on, frames are recorded in data_received
    ok.ws += 1
    ok.bump()
    try:
        code = await proto.closed
        rec.closed[code] = rec.closed.get(code, 0) + 1
    finally:
        if proto.transport is not None:
            proto.transport.close()


async def ws_subscriber(url: str, rec: Recorder, gate: asyncio.Semaphore, ok: Progress) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    clock = time.time
    decode = _decode
    async with gate:  # at most so many connections being opened at once
        ws = await connect(url, compression=None, ping_interval=None, max_size=None)
        try:
            await ws.recv()  # the welcome
            await ws.send('{"type":"request","action":"subscribe","request_id":"s","data":{}}')
            while True:  # its response (nothing is written before every subscriber is ready)
                if decode(await ws.recv()).type == "response":
                    break
        except BaseException:
            await ws.close()
            raise
    try:
        ok.ws += 1
        ok.bump()
        last = 0
        try:
            async for frame in ws:
                received = clock()
                msg = decode(frame)
                if msg.type == "event":
                    last = rec.event(msg, received, "ws", last)
        except ConnectionClosed as exc:
            code = str(exc.rcvd.code if exc.rcvd else "none")
            rec.closed[code] = rec.closed.get(code, 0) + 1
            return
        rec.closed["1000"] = rec.closed.get("1000", 0) + 1
    finally:
        await ws.close()


async def sse_subscriber(
    client: httpx.AsyncClient, path: str, rec: Recorder, gate: asyncio.Semaphore, ok: Progress
) -> None:
    clock = time.time
    decode = _decode
    await gate.acquire()
    held = True
    try:
        async with client.stream("GET", path, headers={"accept": "text/event-stream"}) as resp:
            resp.raise_for_status()
            ok.sse += 1  # the subscription is registered before the headers are sent
            gate.release()
            held = False
            ok.bump()
            last = 0
            buf = b""
            async for chunk in resp.aiter_raw():
                received = clock()
                buf += chunk
                # Litestar ends lines with CRLF; an event ends with an empty line
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.startswith(b"data: "):
                        last = rec.event(decode(line[6:].rstrip(b"\r")), received, "sse", last)
        rec.closed["sse-end"] = rec.closed.get("sse-end", 0) + 1
    finally:
        if held:
            gate.release()


async def client_main_async(
    pipe: Connection, base: str, library_id: str, n_ws: int, n_sse: int, ws_client: str
) -> None:
    rec = Recorder()
    subscriber = raw_ws_subscriber if ws_client == "raw" else ws_subscriber
    ok = Progress(n_ws + n_sse)
    errors = ok.errors
    gate = asyncio.Semaphore(32)  # connections being opened at once
    ws_url = base.replace("http://", "ws://") + f"/v1/libraries/{library_id}/ws"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(30.0, read=None)
    client = httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout)
    path = f"/v1/libraries/{library_id}/events"

    async def guarded(coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            rec.closed["error"] = rec.closed.get("error", 0) + 1
            ok.bump()

    tasks = [asyncio.create_task(guarded(subscriber(ws_url, rec, gate, ok))) for _ in range(n_ws)]
    tasks += [
        asyncio.create_task(guarded(sse_subscriber(client, path, rec, gate, ok)))
        for _ in range(n_sse)
    ]
    ok.bump()
    await ok.done.wait()
    pipe.send(("ready", ok.ws, ok.sse, errors[:5]))
    cpu0 = time.process_time()
    while True:
        command = await asyncio.to_thread(pipe.recv)
        if command == "report":
            pipe.send(("report", rec.report(), time.process_time() - cpu0))
        elif command == "stop":
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.aclose()
            pipe.send(("bye", errors[:5], len(errors)))
            return


def client_main(
    pipe: Connection, base: str, library_id: str, n_ws: int, n_sse: int, ws_client: str
) -> None:
    asyncio.run(client_main_async(pipe, base, library_id, n_ws, n_sse, ws_client))


# -- the writer and the steps (the parent) ---------------------------------------------------


class Clients:
    def __init__(
        self, base: str, library_id: str, n_ws: int, n_sse: int, procs: int, ws_client: str
    ) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(procs):
            share_ws = n_ws // procs + (1 if i < n_ws % procs else 0)
            share_sse = n_sse // procs + (1 if i < n_sse % procs else 0)
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=client_main,
                args=(child, base, library_id, share_ws, share_sse, ws_client),
                name=f"fanout-client-{i}",
                daemon=True,
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def wait_ready(self, timeout: float) -> tuple[int, int, list[str]]:
        ws = sse = 0
        errors: list[str] = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("the clients did not connect in time")
            _, n_ws, n_sse, errs = pipe.recv()
            ws, sse, errors = ws + n_ws, sse + n_sse, errors + errs
        return ws, sse, errors

    def report(self) -> tuple[list[dict[str, Any]], float]:
        for pipe in self.pipes:
            pipe.send("report")
        out, cpu = [], 0.0
        for pipe in self.pipes:
            _, data, seconds = pipe.recv()
            out.append(data)
            cpu += seconds
        return out, cpu

    def stop(self) -> list[str]:
        errors: list[str] = []
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        for pipe in self.pipes:
            with contextlib.suppress(OSError, EOFError):
                if pipe.poll(15):
                    errors += pipe.recv()[1]
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
        return errors


class Tally:
    """Everything the clients reported, merged, per step."""

    def __init__(self) -> None:
        self.counts: dict[int, dict[int, int]] = {}
        self.lat: dict[tuple[int, str], list[bytes]] = {}
        self.events: dict[int, tuple[int, float, str]] = {}
        self.disorder = 0
        self.closed: dict[str, int] = {}

    def add(self, reports: list[dict[str, Any]]) -> None:
        closed: dict[str, int] = {}
        disorder = 0
        for r in reports:
            for step, counts in r["counts"].items():
                mine = self.counts.setdefault(step, {})
                for eid, n in counts.items():
                    mine[eid] = mine.get(eid, 0) + n
            for key, raw in r["lat"].items():
                step, kind = key.split(":")
                self.lat.setdefault((int(step), kind), []).append(raw)
            self.events.update(r["events"])
            disorder += r["disorder"]
            for code, n in r["closed"].items():
                closed[code] = closed.get(code, 0) + n
        self.disorder, self.closed = disorder, closed  # cumulative in each report

    def latencies(self, step: int, kind: str | None = None) -> np.ndarray:
        kinds = [kind] if kind else ["ws", "sse"]
        parts = [
            np.frombuffer(b, dtype=np.float32) for k in kinds for b in self.lat.get((step, k), [])
        ]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)


async def write_step(
    client: httpx.AsyncClient,
    path: str,
    step: int,
    rate: float,
    seconds: float,
    max_inflight: int,
    sent: dict[str, float],
) -> tuple[int, int, float]:
    """Write ``rate * seconds`` documents, paced open-loop; (written, failed, elapsed s)."""
    n = max(1, round(rate * seconds))
    slots = asyncio.Semaphore(max_inflight)
    written = failed = 0

    async def one(i: int) -> None:
        nonlocal written, failed
        title = f"s{step}-{i}"
        try:
            sent[title] = time.time()
            resp = await client.post(path, json={"title": title, "text": f"event {step} {i}"})
            if resp.status_code == 201:
                written += 1
            else:
                failed += 1
        except httpx.HTTPError:
            failed += 1
        finally:
            slots.release()

    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        tasks.append(asyncio.create_task(one(i)))
    # the step lasts n / rate seconds, or longer when the writes could not be sent on time
    elapsed = max(n / rate, loop.time() - start + 1 / rate)
    await asyncio.gather(*tasks)
    return written, failed, elapsed


def summarise(
    tally: Tally,
    step: int,
    rate: float,
    written: int,
    failed: int,
    elapsed: float,
    n_ws: int,
    n_sse: int,
    sent: dict[str, float],
    extra: dict[str, Any],
    p99_limit: float,
) -> dict[str, Any]:
    subscribers = n_ws + n_sse
    counts = tally.counts.get(step, {})
    complete = sum(1 for n in counts.values() if n == subscribers)
    lost = written - complete  # events that some subscriber (or everyone) never received
    lat_all = tally.latencies(step)
    lat_ws = tally.latencies(step, "ws")
    lat_sse = tally.latencies(step, "sse")

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if len(a) else None

    lags = [
        (published - sent[title]) * 1000.0
        for (s, published, title) in tally.events.values()
        if s == step and title in sent
    ]
    p99 = pct(lat_all, 99)
    held = lost == 0 and failed == 0 and p99 is not None and p99 <= p99_limit
    out = {
        "step": step,
        "rate": rate,
        "written": written,
        "failed_writes": failed,
        "seconds": elapsed,
        "achieved_rate": written / elapsed if elapsed else None,
        "ws_deliveries": len(lat_ws),
        "sse_deliveries": len(lat_sse),
        "ws_deliveries_per_s": len(lat_ws) / elapsed,
        "sse_deliveries_per_s": len(lat_sse) / elapsed,
        "expected_deliveries": written * subscribers,
        "lost_events": lost,
        "p50_ms": pct(lat_all, 50),
        "p99_ms": p99,
        "max_ms": float(lat_all.max()) if len(lat_all) else None,
        "p99_ws_ms": pct(lat_ws, 99),
        "p99_sse_ms": pct(lat_sse, 99),
        "write_to_publish_p99_ms": float(np.percentile(lags, 99)) if lags else None,
        "held": held,
        **extra,
    }
    out["server_us_per_delivery"] = (
        out["server_cpu_s"] * 1e6 / (len(lat_all)) if len(lat_all) else None
    )
    return out


async def run_steps(
    args: Any,
    base: str,
    library_id: str,
    server: ServerProcess,
    clients: Clients,
    n_ws: int,
    n_sse: int,
) -> list[dict[str, Any]]:
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    tally = Tally()
    sent: dict[str, float] = {}
    results: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=args.max_inflight)
    path = f"/v1/libraries/{library_id}/documents"
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        _, cpu_clients_before = await asyncio.to_thread(clients.report)
        for step, rate in enumerate(rates):
            rss_max = rss_kib(server.pid)
            cpu_server = cpu_seconds(server.pid)
            load = os.getloadavg()[0]
            t0 = time.monotonic()
            writer = asyncio.create_task(
                write_step(client, path, step, rate, args.step_seconds, args.max_inflight, sent)
            )
            while not writer.done():
                await asyncio.sleep(0.25)
                rss_max = max(rss_max, rss_kib(server.pid))
            written, failed, elapsed = writer.result()
            busy = time.monotonic() - t0
            cpu_server = cpu_seconds(server.pid) - cpu_server
            await asyncio.sleep(args.drain)
            reports, cpu_clients = await asyncio.to_thread(clients.report)
            tally.add(reports)
            extra = {
                "server_rss_mib": rss_max / 1024,
                "server_cpu": cpu_server / busy,
                "server_cpu_s": cpu_server,
                "clients_cpu": (cpu_clients - cpu_clients_before) / (busy + args.drain),
                "loadavg_1min": load,
                "closed_connections": dict(tally.closed),
                "disorder": tally.disorder,
            }
            cpu_clients_before = cpu_clients
            row = summarise(
                tally, step, rate, written, failed, elapsed, n_ws, n_sse, sent, extra, args.p99_ms
            )
            if tally.disorder or any(k != "1000" for k in tally.closed):
                row["held"] = False
            results.append(row)
            log(
                f"step {step}: {rate:g} ev/s, {row['ws_deliveries_per_s']:,.0f} WS + "
                f"{row['sse_deliveries_per_s']:,.0f} SSE deliveries/s, lost {row['lost_events']}, "
                f"p50 {row['p50_ms'] or 0:.1f} ms, p99 {row['p99_ms'] or 0:.1f} ms, "
                f"server CPU {row['server_cpu']:.0%}, RSS {row['server_rss_mib']:.0f} MiB, "
                f"load {load:.2f}{'' if row['held'] else ' (not held)'}"
            )
            if not row["held"] and not args.keep_going:
                break
    # late deliveries (after a step's drain) are added to the rows they belong to
    reports, _ = await asyncio.to_thread(clients.report)
    tally.add(reports)
    return results


HEADERS = [
    "events/s",
    "writes sent/s",
    "WS deliveries/s",
    "SSE deliveries/s",
    "lost",
    "p50 ms",
    "p99 ms",
    "p99 WS / SSE ms",
    "max ms",
    "server CPU",
    "server µs/delivery",
    "clients CPU",
    "server RSS MiB",
    "load",
    "held",
]


def table_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in results:
        both = f"{r['p99_ws_ms'] or 0:.1f} / {r['p99_sse_ms'] or 0:.1f}"
        rows.append(
            [
                f"{r['rate']:g}",
                f"{r['achieved_rate']:.1f}",
                r["ws_deliveries_per_s"],
                r["sse_deliveries_per_s"],
                r["lost_events"],
                r["p50_ms"],
                r["p99_ms"],
                both,
                r["max_ms"],
                f"{r['server_cpu']:.0%}",
                r["server_us_per_delivery"],
                f"{r['clients_cpu']:.0%}",
                r["server_rss_mib"],
                r["loadavg_1min"],
                r["held"],
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = warn_if_busy()
    server = ServerProcess(log_level=args.server_log, keep_log=True)
    base = server.url
    clients: Clients | None = None
    started = time.monotonic()
    try:
        server.wait_ready()
        log(f"server pid {server.pid} on {base} (log: {server.log_path})")
        resp = httpx.post(base + "/v1/libraries", json={"name": "fanout", "index": "flat"})
        resp.raise_for_status()
        library_id = resp.json()["id"]
        rss_idle = rss_kib(server.pid) / 1024
        clients = Clients(base, library_id, args.ws, args.sse, args.procs, args.ws_client)
        n_ws, n_sse, errors = clients.wait_ready(args.connect_timeout)
        log(
            f"{n_ws} WebSocket + {n_sse} SSE subscribers in {args.procs} processes "
            f"({time.monotonic() - started:.0f} s), server RSS {rss_kib(server.pid) / 1024:.0f} MiB"
        )
        if errors or n_ws != args.ws or n_sse != args.sse:
            raise RuntimeError(f"not every subscriber connected: {errors}")
        rss_connected = rss_kib(server.pid) / 1024
        results = asyncio.run(run_steps(args, base, library_id, server, clients, n_ws, n_sse))
    finally:
        client_errors = clients.stop() if clients else []
        server.stop()
    held = [r for r in results if r["held"]]
    best = max(held, key=lambda r: r["rate"]) if held else None
    met = (
        best is not None  # the target: a rate of events to the WS subscribers, all delivered
        and best["rate"] * n_ws >= TARGET_DELIVERIES
        and all(r["held"] for r in results if r["rate"] <= best["rate"])
    )
    print(
        f"\n## Fan-out: {n_ws:,} WebSocket + {n_sse:,} SSE subscribers in {args.procs} client "
        f"processes, {args.step_seconds:g} s per step\n"
    )
    print(markdown_table(HEADERS, table_rows(results)))
    if best:
        print(
            f"\nHighest rate held (p99 <= {args.p99_ms:g} ms, 0 lost): {best['rate']:g} events/s = "
            f"{best['ws_deliveries_per_s']:,.0f} WS + {best['sse_deliveries_per_s']:,.0f} SSE "
            f"deliveries/s. Target >= {TARGET_DELIVERIES:,} WS deliveries/s "
            f"({best['rate']:g} events/s x {n_ws:,} = {best['rate'] * n_ws:,.0f}): "
            f"{'met' if met else 'NOT met'}."
        )
    else:
        print("\nNo step held.")
    print(
        f"Server RSS: {rss_idle:.0f} MiB idle, {rss_connected:.0f} MiB with every subscriber; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
        f"{time.monotonic() - started:.0f} s."
    )
    path = write_json(
        "fanout",
        {
            "args": vars(args),
            "subscribers": {"ws": n_ws, "sse": n_sse},
            "server_rss_mib": {"idle": rss_idle, "connected": rss_connected},
            "steps": results,
            "highest_rate_held": best["rate"] if best else None,
            "target": {"ws_deliveries_per_s": TARGET_DELIVERIES, "p99_ms": TARGET_P99_MS},
            "target_met": met,
            "client_errors": client_errors,
            "loadavg_before": load_before,
        },
        args.out,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
