"""What the data commands share: where the data is (a server, or a local store), and failures
as one-line messages and exit codes."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from arrwdb.api import DatabaseAPI, LibraryAPI
from arrwdb.domain.errors import (
    ArrwdbError,
    ForbiddenError,
    LibraryNotFoundError,
    StorageError,
    UnauthorizedError,
)

#: The exit codes of the data commands.
OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
DENIED = 4
INTERRUPTED = 130
BROKEN_PIPE = 141

EXIT_CODES = """exit codes:
  0    done
  1    refused or failed: no such library, a document refused, ...
  2    usage: a bad option, an input that cannot be read, no such data directory
  3    the server cannot be reached
  4    the server refused the API key (none given, unknown, or without that access)
  130  interrupted (Ctrl-C), except tail, which Ctrl-C ends with 0
"""

DEFAULT_URL = "http://127.0.0.1:8000"
#: The module of each command.
MODULES = {"ingest": "_ingest", "search": "_query", "libraries": "_query", "tail": "_tail"}


class CommandError(Exception):
    """A failure to report as ``arrwdb COMMAND: error: MESSAGE`` with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Target:
    """An open database: a server's (``local`` false) or a store opened in this process."""

    db: DatabaseAPI
    #: for messages: "arrwDB at http://..." or "the store in PATH"
    where: str
    local: bool


class Session:
    """Where a command's data is, from its options; ``open`` connects (or opens the store)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.data_dir: str | None = args.data_dir
        self.url: str = args.url or os.environ.get("ARRWDB_URL") or DEFAULT_URL
        #: which option gave the API key, for messages
        self.key_source: str | None = None
        self.target: Target | None = None

    @property
    def where(self) -> str:
        return f"the store in {self.data_dir}" if self.data_dir else f"arrwDB at {self.url}"

    def open(self, *, create: bool = False, hint: str = "") -> Target:
        """The database; ``create``: a missing data directory may be created (else the error
        says ``hint``)."""
        args = self.args
        if self.data_dir is not None:
            if args.api_key or args.api_key_file:
                raise CommandError(
                    "--api-key and --api-key-file are for a server (--url), not --data-dir", USAGE
                )
            if not os.path.isdir(self.data_dir) and not create:
                suffix = f" ({hint})" if hint else ""
                raise CommandError(f"no data directory at {self.data_dir}{suffix}", USAGE)
            from arrwdb.client import open as open_store

            try:
                db: DatabaseAPI = open_store(self.data_dir)
            except StorageError as exc:
                advice = " (a server on it is reached with --url)" if "in use" in str(exc) else ""
                raise CommandError(f"{exc}{advice}") from None
            self.target = Target(db, self.where, local=True)
            return self.target
        from arrwdb.remote import connect

        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            option = "--url" if args.url else "ARRWDB_URL"
            raise CommandError(
                f"{option} {self.url!r} is not a server's address (http://HOST:PORT)", USAGE
            )
        key = self._api_key()
        self.target = Target(connect(self.url, key, timeout=args.timeout), self.where, local=False)
        return self.target

    def _api_key(self) -> str | None:
        args = self.args
        if args.api_key:
            self.key_source = "--api-key"
            return str(args.api_key)
        if args.api_key_file:
            self.key_source = f"--api-key-file {args.api_key_file}"
            try:
                with open(args.api_key_file, encoding="utf-8") as file:
                    key = file.read().strip()
            except OSError as exc:
                message = f"--api-key-file {args.api_key_file}: {exc.strerror}"
                raise CommandError(message, USAGE) from None
            if not key:
                raise CommandError(f"--api-key-file {args.api_key_file}: the file is empty", USAGE)
            return key
        from_env = os.environ.get("ARRWDB_API_KEY") or None
        self.key_source = "ARRWDB_API_KEY" if from_env else None
        return from_env

    def close(self) -> None:
        if self.target is not None:
            self.target.db.close()
            self.target = None


def get_library(
    target: Target, name: str, session: Session, hint: str = "arrwdb libraries lists them"
) -> LibraryAPI:
    """The library ``name`` (or id); missing: a message naming it, with ``hint``."""
    try:
        return target.db.get_library(name)
    except LibraryNotFoundError:
        raise CommandError(f"library {name!r} not found on {session.where} ({hint})") from None


def explain(exc: ArrwdbError, session: Session) -> CommandError:
    """The message and exit code of an error of the database."""
    from arrwdb.remote import ServerUnavailableError

    if isinstance(exc, ServerUnavailableError):
        return CommandError(
            f"{exc} (is the server running? --url or ARRWDB_URL choose another)", UNREACHABLE
        )
    if isinstance(exc, UnauthorizedError):
        if session.key_source is None:
            return CommandError(
                f"{session.where} needs an API key: give --api-key KEY or --api-key-file PATH, "
                "or set ARRWDB_API_KEY",
                DENIED,
            )
        return CommandError(
            f"{session.where} refused the API key of {session.key_source}: {exc}", DENIED
        )
    if isinstance(exc, ForbiddenError):
        source = session.key_source or "the request"
        return CommandError(f"the API key of {source} does not allow this: {exc}", DENIED)
    if isinstance(exc, LibraryNotFoundError):
        return CommandError(f"{exc} on {session.where}")
    return CommandError(f"{exc} ({exc.code})")


def run(args: argparse.Namespace) -> int:
    """Run the data command ``args.command``: its exit code; failures are told on stderr."""
    command = args.command
    module = importlib.import_module(f"arrwdb.cli_data.{MODULES[command]}")
    session = Session(args)
    try:
        try:
            code: int = module.main(args, session)
        finally:
            session.close()
    except CommandError as exc:
        return fail(command, str(exc), exc.exit_code)
    except ArrwdbError as exc:
        error = explain(exc, session)
        return fail(command, str(error), error.exit_code)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # the reader went away (``| head``): end quietly, as other commands do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    return code


def fail(command: str, message: str, exit_code: int) -> int:
    print(f"arrwdb {command}: error: {message}", file=sys.stderr, flush=True)
    return exit_code
