"""The ``arrwdb`` command: ``arrwdb serve`` runs the server.

Options override ``ARRWDB_*`` environment variables, which override the defaults of
:class:`arrwdb.config.Settings` (everything else, e.g. ``ARRWDB_TRANSPORTS``,
``ARRWDB_CORS_ORIGINS``, is configured through the environment).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from arrwdb import cli_data  # ingest, search, tail, libraries
from arrwdb.config import Settings

DEFAULT_DATA_DIR = "./arrwdb-data"
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arrwdb", description="arrwDB: a vector database.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the server (REST, NDJSON, SSE, WebSocket)", description=__doc__
    )
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument(
        "--storage",
        choices=("memory", "disk", "postgres"),
        help="disk (durable, in --data-dir; the default), memory (ephemeral) or postgres "
        "(shared by several servers; needs arrwdb[postgres])",
    )
    serve.add_argument("--data-dir", help=f"data directory for disk storage ({DEFAULT_DATA_DIR})")
    serve.add_argument(
        "--postgres-url", help="PostgreSQL URL for postgres storage (ARRWDB_POSTGRES_URL)"
    )
    serve.add_argument(
        "--postgres-schema", help="schema of the tables in that database (default arrwdb)"
    )
    serve.add_argument(
        "--api-key-file",
        help="file holding the admin API key (else ARRWDB_API_KEY); with one, every request "
        "but GET /v1/health needs a key",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="serve without an API key on an address other than loopback",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on one port (default 1; more need --storage postgres)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("ARRWDB_LOG_FORMAT", "text"),
        help="log lines as text (default) or as one JSON object each (ARRWDB_LOG_FORMAT)",
    )
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        help="log level (default info)",
    )
    snapshot = commands.add_parser(
        "snapshot",
        help="write a consistent backup of a data directory (the server must not be running)",
    )
    snapshot.add_argument("destination", help="an empty or new directory for the backup")
    snapshot.add_argument("--data-dir", help=f"the data directory ({DEFAULT_DATA_DIR})")
    cli_data.add_commands(commands)
    return parser


def _snapshot(args: argparse.Namespace) -> int:
    from arrwdb.adapters.storage.disk import DiskStore
    from arrwdb.domain.errors import StorageError

    data_dir = args.data_dir or os.environ.get("ARRWDB_DATA_DIR") or DEFAULT_DATA_DIR
    if not os.path.isdir(data_dir):
        print(f"arrwdb snapshot: no data directory at {data_dir}", file=sys.stderr)
        return 2
    try:
        with DiskStore(data_dir) as store:
            path = store.snapshot_to(args.destination)
    except StorageError as exc:
        print(f"arrwdb snapshot: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    storage = args.storage or os.environ.get("ARRWDB_STORAGE") or "disk"
    data_dir = args.data_dir or os.environ.get("ARRWDB_DATA_DIR")
    if storage == "disk":
        data_dir = data_dir or DEFAULT_DATA_DIR
    try:
        if args.workers < 1:
            raise ValueError("--workers must be >= 1")
        settings = Settings.from_env(
            api_key=_read_key(args.api_key_file),
            allow_anonymous=args.allow_anonymous,
            host=args.host,
            port=args.port,
            storage=storage,
            data_dir=data_dir,
            postgres_url=args.postgres_url,
            postgres_schema=args.postgres_schema,
            log_level=args.log_level,
        )
    except ValueError as exc:
        print(f"arrwdb serve: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if args.log_format == "json" else logging.Formatter(LOG_FORMAT)
    )
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])

    from arrwdb.server import (
        AnonymousRefusedError,
        EmbedderUnavailableError,
        StorageUnavailableError,
        WorkersRefusedError,
        serve,
    )

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal: end quietly
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if not serve(settings, workers=args.workers):
            return 1
    except (
        StorageUnavailableError,
        EmbedderUnavailableError,
        WorkersRefusedError,
        AnonymousRefusedError,
    ) as exc:
        print(f"arrwdb serve: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` and, for an
    exception, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _read_key(path: str | None) -> str | None:
    """The admin key in ``path`` (surrounding whitespace removed)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            key = file.read().strip()
    except OSError as exc:
        raise ValueError(f"--api-key-file {path}: {exc.strerror}") from None
    if not key:
        raise ValueError(f"--api-key-file {path}: the file is empty")
    return key


class _Stopped(Exception):
    """SIGTERM, after the graceful shutdown."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "snapshot":
        return _snapshot(args)
    if args.command in cli_data.COMMANDS:
        return cli_data.run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
