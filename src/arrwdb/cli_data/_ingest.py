"""``arrwdb ingest``: documents from an NDJSON file, stdin or a directory, into a library, with a
progress bar on stderr (advanced as the database answers) and a summary at the end."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from arrwdb.api import LibraryAPI
from arrwdb.cli_data._common import (
    FAILED,
    INTERRUPTED,
    OK,
    USAGE,
    CommandError,
    Session,
    get_library,
)
from arrwdb.domain.errors import ArrwdbError, InternalError, StorageError

#: The files of a directory that become documents.
TEXT_SUFFIXES = (".txt", ".md")
#: How many failures the report shows (all of them count).
SHOWN_FAILURES = 10
INTERRUPTED_NOTE = " (interrupted: documents sent and not yet answered may be added too)"
STOPPED_NOTE = " (stopped by the error below)"


@dataclass(frozen=True, slots=True)
class Item:
    """One input: a document, or why its line is not one. ``where``: "line 12", "a/b.md";
    ``order``: its place in the input."""

    where: str
    order: int
    document: dict[str, Any] | None
    error: str | None = None


def main(args: argparse.Namespace, session: Session) -> int:
    options = _create_options(args)
    with ExitStack() as stack:
        total, items, source = _source(args.source, args.upsert)
        if source is not None:
            stack.enter_context(source)
        target = session.open(create=args.create, hint="--create makes one")
        if args.create:
            lib = target.db.get_or_create_library(args.library, **options)
        else:
            lib = get_library(target, args.library, session, hint="add --create to create it")
        upsert_documents = lib.upsert_documents if target.local and args.upsert else None
        report = Report(total, show=args.progress)
        try:
            with report:
                if target.local:
                    _into_store(lib, items, report, args.batch, upsert_documents)
                else:
                    _into_server(lib, items, report, args.upsert)
        except KeyboardInterrupt:
            report.print_summary(args.library, args.upsert, ended=INTERRUPTED_NOTE)
            return INTERRUPTED
        except ArrwdbError:
            if report.answered:  # what was done before the error
                report.print_summary(args.library, args.upsert, ended=STOPPED_NOTE)
            raise
    report.print_summary(args.library, args.upsert)
    return FAILED if report.failed else OK


def _create_options(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a library ``--create`` makes (refused without ``--create``)."""
    options: dict[str, Any] = {}
    for name in ("dimension", "metric", "index", "embedder"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if options and not args.create:
        raise CommandError(f"--{next(iter(options))} is for a library made by --create", USAGE)
    if isinstance(options.get("embedder"), str) and options["embedder"].lower() == "none":
        options["embedder"] = None  # vectors only
    return options


# -- the input ------------------------------------------------------------------------------


def _source(path: str, upsert: bool) -> tuple[int | None, Iterator[Item], IO[bytes] | None]:
    """How many documents (``None``: not known), the inputs, and the file to close."""
    if path == "-":
        return None, _lines(sys.stdin.buffer), None
    if os.path.isdir(path):
        files = list(_text_files(Path(path)))
        return len(files), _files(Path(path), files, upsert), None
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by ``main``
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror}", USAGE) from None
    if not file.seekable():  # a pipe (``<(zcat dump.gz)``): read once, its size unknown
        return None, _lines(file), file
    total = sum(1 for line in file if line.strip())
    file.seek(0)
    return total, _lines(file), file


def _lines(file: IO[bytes]) -> Iterator[Item]:
    for number, raw in enumerate(file, 1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            document = json.loads(raw)
        except UnicodeDecodeError:
            yield Item(where, number, None, "not UTF-8 text")
            continue
        except json.JSONDecodeError as exc:
            yield Item(where, number, None, f"not JSON: {exc.msg} (column {exc.colno})")
            continue
        problem = _shape_problem(document)
        yield Item(where, number, None if problem else document, problem)


def _shape_problem(document: Any) -> str | None:
    if not isinstance(document, dict):
        return f"a document is a JSON object, not {_json_kind(document)}"
    chunks = document.get("chunks")
    if chunks is not None and not (
        isinstance(chunks, list) and all(isinstance(c, dict) for c in chunks)
    ):
        return "chunks must be a list of objects"
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    kinds = {list: "an array", str: "a string", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _text_files(root: Path) -> Iterator[str]:
    """The .txt and .md files under ``root`` (not in hidden directories), in order, as
    relative paths with ``/``."""
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(names):
            if name.lower().endswith(TEXT_SUFFIXES) and not name.startswith("."):
                yield Path(directory, name).relative_to(root).as_posix()


def document_id(relative_path: str) -> str:
    """A file's document id: its path (an id cannot hold ``/``: it is written ``%2F``)."""
    return relative_path.replace("%", "%25").replace("/", "%2F")


def _files(root: Path, files: list[str], upsert: bool) -> Iterator[Item]:
    for order, relative in enumerate(files):
        try:
            text = (root / relative).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            yield Item(relative, order, None, "not UTF-8 text")
            continue
        except OSError as exc:
            yield Item(relative, order, None, f"cannot be read: {exc.strerror}")
            continue
        document: dict[str, Any] = {"title": relative, "text": text, "metadata": {"path": relative}}
        if upsert:
            document["id"] = document_id(relative)
        yield Item(relative, order, document)


# -- into the database ----------------------------------------------------------------------


def _into_server(lib: Any, items: Iterator[Item], report: Report, upsert: bool) -> None:
    """Streamed to the server (NDJSON): each line's answer advances the bar as it comes."""
    sent: dict[int, Item] = {}  # by the number of the line sent (from 1)
    numbers = itertools.count(1)

    def documents() -> Iterator[dict[str, Any]]:
        for item in items:
            if item.document is None:
                report.failure(item, item.error or "not a document")
                continue
            sent[next(numbers)] = item
            yield item.document

    with lib.ingest(documents(), upsert=upsert) as stream:
        for result in stream:
            report.answered += 1
            item = sent.pop(result.line, None) or Item(f"document {result.line}", result.line, None)
            if result.success:
                report.success()
            else:
                report.failure(item, result.error or "refused", result.code)
        report.server_summary = stream.summary


def _into_store(
    lib: LibraryAPI, items: Iterator[Item], report: Report, batch_size: int, upsert: Any
) -> None:
    """Added in batches (one commit each); a batch refused is retried document by document,
    so that only the bad documents fail."""
    write = upsert if upsert is not None else lib.add_documents
    batch: list[tuple[Item, dict[str, Any]]] = []

    def commit() -> None:
        report.answered += len(batch)
        try:
            write([document for _, document in batch])
            report.success(len(batch))
        except (StorageError, InternalError):
            raise
        except ArrwdbError:
            for item, document in batch:
                try:
                    write([document])
                    report.success()
                except (StorageError, InternalError):
                    raise
                except ArrwdbError as exc:
                    report.failure(item, str(exc), exc.code)
        batch.clear()

    for item in items:
        if item.document is None:
            report.failure(item, item.error or "not a document")
            continue
        batch.append((item, item.document))
        if len(batch) >= batch_size:
            commit()
    if batch:
        commit()


# -- the report -----------------------------------------------------------------------------


class RateColumn(ProgressColumn):
    """Documents per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:
            speed = task.completed / task.elapsed
        return Text("? docs/s" if speed is None else f"{speed:,.0f} docs/s", style="cyan")


class EtaColumn(TimeRemainingColumn):
    """The time left, while it can be told."""

    def render(self, task: Task) -> Text:
        if task.total is None or task.finished:
            return Text("")
        return Text.assemble("eta ", super().render(task))


class Report:
    """Counts, the first failures, and the progress bar (on stderr: drawn live on a terminal,
    once at the end otherwise)."""

    def __init__(self, total: int | None, *, show: bool) -> None:
        self.started = time.monotonic()
        self.succeeded = 0
        self.failed = 0
        #: documents the database has answered for (added or refused)
        self.answered = 0
        #: the first failures in input order (those known early, found here, and those the
        #: database answers later are sorted): (order, where, error, code)
        self.failures: list[tuple[int, str, str, str | None]] = []
        self.server_summary: dict[str, Any] | None = None
        self.console = Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("[bold]ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            RateColumn(),
            TimeElapsedColumn(),
            EtaColumn(),
            console=self.console,
            disable=not show,
        )
        self.task = self.progress.add_task("ingest", total=total, failed=0)

    def __enter__(self) -> Report:
        self.progress.start()
        return self

    def __exit__(self, error: type[BaseException] | None, *exc: object) -> None:
        task = self.progress.tasks[0]
        if task.total is None and error is None:  # all read: the size is known now
            self.progress.update(self.task, total=task.completed)
        self.progress.stop()

    def success(self, count: int = 1) -> None:
        self.succeeded += count
        self.progress.advance(self.task, count)

    def failure(self, item: Item, error: str, code: str | None = None) -> None:
        self.failed += 1
        self.failures.append((item.order, item.where, error, code))
        if len(self.failures) >= 4 * SHOWN_FAILURES:
            self.failures = sorted(self.failures)[:SHOWN_FAILURES]
        self.progress.update(self.task, advance=1, failed=self.failed)

    def print_summary(self, library: str, upsert: bool, ended: str = "") -> None:
        """The failures shown (stderr), then one line of counts (stdout)."""
        shown = sorted(self.failures)[:SHOWN_FAILURES]
        for _, where, error, code in shown:
            suffix = f" [{code}]" if code else ""
            print(f"{where}: {error}{suffix}", file=sys.stderr)
        if self.failed > len(shown):
            print(f"... and {self.failed - len(shown)} more failures", file=sys.stderr)
        if upsert and any(code == "already_exists" for *_, code in shown):
            print(
                "note: ids that exist were refused: this server does not apply --upsert",
                file=sys.stderr,
            )
        elapsed = time.monotonic() - self.started
        summary = self.server_summary or {}
        if "updated" in summary:
            written = f"{summary.get('added', 0)} added, {summary['updated']} updated"
        elif upsert:
            written = f"{self.succeeded} added or updated"
        else:
            written = f"{self.succeeded} added"
        rate = self.succeeded / elapsed if elapsed > 0 else 0.0
        print(
            f"{self.succeeded + self.failed} received, {written}, {self.failed} failed "
            f"in {elapsed:.2f} s ({rate:,.0f} docs/s) into library {library!r}{ended}",
            flush=True,
        )
