"""The data commands of ``arrwdb``: ``ingest``, ``search``, ``tail`` and ``libraries``, as a
client of a server (``--url``) or on a local store opened in process (``--data-dir``).

This module only declares the options (it is imported by every ``arrwdb`` command, ``serve``
included); each command's module, and ``rich``, are imported when that command runs.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from arrwdb.cli_data._common import EXIT_CODES, run
from arrwdb.domain.events import EARLIEST, EVENT_TYPES
from arrwdb.domain.models import INDEX_KINDS, METRICS

COMMANDS = ("ingest", "search", "tail", "libraries")


def add_commands(commands: Any) -> None:
    """Add the data commands to ``commands`` (the sub-parsers of ``arrwdb``)."""
    formatter = argparse.RawDescriptionHelpFormatter

    ingest = commands.add_parser(
        "ingest",
        formatter_class=formatter,
        help="add documents from an NDJSON file, stdin or a directory of .txt/.md files",
        description=_paragraphs(
            "Add documents to a library, with a progress bar (on stderr) and a summary.",
            "PATH is an NDJSON file (.ndjson, .jsonl: one document per line, as the REST API "
            'takes it: {"title", "text" or "chunks", "metadata", "id"}), "-" for standard '
            "input, or a directory: each .txt and .md file under it becomes a document (its "
            'path relative to the directory is its title and its metadata {"path"}). A line '
            "that is not a document fails alone; the others are added.",
        ),
        epilog=EXIT_CODES + "  (ingest: 1 also when some documents failed)",
    )
    _connection_options(ingest)
    ingest.add_argument("source", metavar="PATH", help="an NDJSON file, - (stdin) or a directory")
    ingest.add_argument("--library", "-l", required=True, metavar="NAME", help="the library")
    ingest.add_argument("--create", action="store_true", help="create the library if missing")
    ingest.add_argument(
        "--upsert",
        action="store_true",
        help="a document whose id exists replaces it (a directory's files get their path as "
        "id, so that running again updates them)",
    )
    ingest.add_argument(
        "--batch",
        type=_positive,
        default=256,
        metavar="N",
        help="documents per commit on a local store (default 256; a server batches by itself)",
    )
    ingest.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    created = ingest.add_argument_group("a library made by --create")
    created.add_argument(
        "--dimension", type=_positive, metavar="N", help="vector dimension (default: any)"
    )
    created.add_argument("--metric", choices=METRICS, help="default cosine")
    created.add_argument("--index", choices=INDEX_KINDS, help="default hnsw")
    created.add_argument(
        "--embedder", help="the embedder of its text (default: the server's); none: vectors only"
    )

    search = commands.add_parser(
        "search",
        formatter_class=formatter,
        help="search a library by text",
        description="Search a library by text: a table of the best chunks.",
        epilog=EXIT_CODES,
    )
    _connection_options(search)
    search.add_argument("library", metavar="LIB", help="the library's name or id")
    search.add_argument("query", metavar="TEXT", help="the text to search for")
    search.add_argument("-k", type=_positive, default=5, help="how many results (default 5)")
    search.add_argument(
        "--filter",
        type=_json_object,
        metavar="JSON",
        help='a metadata filter, e.g. \'{"year": {"$gte": 2015}}\'',
    )
    search.add_argument("--json", action="store_true", help="one JSON object per result")

    tail = commands.add_parser(
        "tail",
        formatter_class=formatter,
        help="print change events as they happen",
        description=_paragraphs(
            "Print change events as they happen, one line each, until interrupted (Ctrl-C "
            "ends it, exit code 0). After a lost connection it reconnects by itself and "
            "resumes after the last event printed: none is missed or printed twice.",
            "On a local store (--data-dir) it prints the events kept (--since) and ends: "
            "nothing else can write to the store while it is open here.",
        ),
        epilog=EXIT_CODES,
    )
    _connection_options(tail)
    tail.add_argument("library", metavar="LIB", nargs="?", help="a library (default: every one)")
    tail.add_argument(
        "--since",
        type=_since,
        metavar="ID",
        help="start after event ID (earliest: every event kept); default: new events only",
    )
    tail.add_argument(
        "--types",
        type=_types,
        action="extend",
        metavar="TYPES",
        help="only these event types, comma-separated: " + ", ".join(EVENT_TYPES),
    )
    tail.add_argument("--json", action="store_true", help="print each event's JSON envelope")

    libraries = commands.add_parser(
        "libraries",
        formatter_class=formatter,
        help="list the libraries",
        description="List the libraries: name, id, counts and settings.",
        epilog=EXIT_CODES,
    )
    _connection_options(libraries)
    libraries.add_argument("--json", action="store_true", help="one JSON object per library")


def _paragraphs(*texts: str) -> str:
    return "\n\n".join(textwrap.fill(text, width=78) for text in texts)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the data is")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--url", help="the arrwDB server (default: ARRWDB_URL, else http://127.0.0.1:8000)"
    )
    where.add_argument(
        "--data-dir",
        metavar="PATH",
        help="open the store in PATH in this process instead (no server may have it open)",
    )
    keys = group.add_mutually_exclusive_group()
    keys.add_argument("--api-key", metavar="KEY", help="the server's API key (ARRWDB_API_KEY)")
    keys.add_argument("--api-key-file", metavar="PATH", help="a file holding the API key")
    group.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for the server's answer (default 30)",
    )


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return number


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of seconds")
    return seconds


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("a filter is a JSON object")
    return parsed


def _since(value: str) -> str:
    if value != EARLIEST and not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not an event id (a number) or earliest")
    return value


def _types(value: str) -> list[str]:
    types = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event type {unknown[0]!r} (known: {', '.join(EVENT_TYPES)})"
        )
    return types


__all__ = ["COMMANDS", "add_commands", "run"]
