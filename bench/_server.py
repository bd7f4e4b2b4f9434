"""A real arrwDB server in a child process, for the benchmarks that go over the network.

``ServerProcess`` runs ``python -m arrwdb.cli serve --storage memory`` (or other storage
options) on a free loopback port
with the caller's ``ARRWDB_*`` variables removed (so a benchmark measures the defaults plus what
it sets itself), logs to a file and stops gracefully (SIGTERM: the server drains).
``rss_kib`` and ``cpu_seconds`` read a process's memory and CPU time from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


class ServerProcess:
    """``arrwdb serve --storage memory`` in a child process, on a free loopback port.

    ``env`` adds ``ARRWDB_*`` settings, ``storage`` replaces the storage options; the log goes
    to ``log_path`` (kept), or to a temporary file that is deleted on ``stop`` unless
    ``keep_log``."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        log_level: str = "warning",
        log_path: Path | None = None,
        keep_log: bool = False,
        storage: Sequence[str] = ("--storage", "memory"),
    ) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.ws_url = f"ws://{HOST}:{self.port}"
        self._own_log = log_path is None and not keep_log
        self.log_path = log_path or Path(
            tempfile.mkstemp(prefix=f"arrwdb-server-{self.port}-", suffix=".log")[1]
        )
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ARRWDB_")}
        environ.update(env or {})
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "arrwdb.cli",
                "serve",
                *storage,
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--log-level",
                log_level,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environ,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60.0, headers: Mapping[str, str] | None = None) -> float:
        """Seconds until ``/v1/health/ready`` answered 200 (with ``headers``: an API key)."""
        start = time.perf_counter()
        deadline = start + timeout
        with httpx.Client(base_url=self.url, timeout=2.0, headers=headers) as client:
            while True:
                if self.proc.poll() is not None:
                    code = self.proc.returncode
                    raise RuntimeError(f"the server exited ({code}):\n{self.tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/v1/health/ready").status_code == 200:
                        return time.perf_counter() - start
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"the server did not become ready:\n{self.tail()}")
                time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def rss_mib(self) -> float | None:
        kib = rss_kib(self.pid)
        return kib / 1024 if kib else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: the server drains
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
