"""``arrwdb serve`` in a child process on a free loopback port, and NDJSON clients that ingest
into it until it dies: for the tests that kill it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``arrwdb serve <args> --port <free>``; ``start`` waits until it is ready."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = None if env is None else {**os.environ, **env}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "arrwdb.cli",
                "serve",
                *self.args,
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.proc.stderr.read().decode()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{self.url}/v1/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become ready")

    def peak_rss(self) -> int:
        """The most memory (bytes) the process has held so far (``VmHWM``)."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")

    def kill(self) -> None:
        """SIGKILL: nothing is flushed, nothing is closed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()


def key_vector(key: str, dim: int) -> list[float]:
    """A vector for a document key (the same key, the same vector)."""
    seed = int.from_bytes(key.encode()[-8:].rjust(8, b"\0"), "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32).tolist()


def ingest_until_stopped(
    url: str, library_id: str, prefix: str, dim: int, acked: dict[str, str], stop: threading.Event
) -> None:
    """Send NDJSON requests of 5 documents (titled ``<prefix>-b<n>-<i>``, metadata ``key``)
    until ``stop`` is set or the server dies; record each acknowledged one's id by title."""
    batch = 0
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            keys = [f"{prefix}-b{batch}-{i}" for i in range(5)]
            body = "".join(
                json.dumps(
                    {
                        "title": k,
                        "metadata": {"key": k},
                        "chunks": [{"text": k, "embedding": key_vector(k, dim)}],
                    }
                )
                + "\n"
                for k in keys
            )
            try:
                with http.stream(
                    "POST",
                    f"/v1/libraries/{library_id}/documents/stream",
                    content=body.encode(),
                    headers={"content-type": "application/x-ndjson"},
                ) as response:
                    for line in response.iter_lines():
                        msg = json.loads(line) if line else {}
                        if msg.get("success"):
                            acked[keys[msg["line"] - 1]] = msg["document_id"]
            except (httpx.TransportError, json.JSONDecodeError):
                return
            batch += 1
