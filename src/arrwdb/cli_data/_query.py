"""``arrwdb search`` and ``arrwdb libraries``: tables for people, JSON lines for scripts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from arrwdb.cli_data._common import OK, Session, get_library
from arrwdb.domain.models import Library

#: The widest a title is shown in the search table, and the narrowest its text.
TITLE_WIDTH = 40
TEXT_WIDTH = 20
#: The width of tables written to a file or a pipe.
PIPE_WIDTH = 160


def main(args: argparse.Namespace, session: Session) -> int:
    if args.command == "search":
        return search(args, session)
    return libraries(args, session)


def search(args: argparse.Namespace, session: Session) -> int:
    target = session.open()
    lib = get_library(target, args.library, session)
    result = lib.search(args.query, k=args.k, filter=args.filter)
    if args.json:
        for rank, hit in enumerate(result.results, 1):
            line = {
                "rank": rank,
                "score": hit.score,
                "document_id": hit.document_id,
                "document_title": hit.document_title,
                "chunk_id": hit.chunk_id,
                "position": hit.position,
                "text": hit.text,
                "metadata": dict(hit.metadata or {}),
            }
            print(json.dumps(line, ensure_ascii=False, default=str), flush=True)
        return OK
    if not result.results:
        print("no results", file=sys.stderr)
        return OK
    console = _console()
    hits = result.results
    ranks = [str(rank) for rank in range(1, len(hits) + 1)]
    scores = [f"{hit.score:.4f}" for hit in hits]
    titles = [_cut(hit.document_title, TITLE_WIDTH) for hit in hits]
    ids = [Text(hit.document_id) for hit in hits]
    fixed = sum(
        max(cell_len(header), *(cell_len(str(cell)) for cell in cells))
        for header, cells in (("#", ranks), ("score", scores), ("title", titles), ("document", ids))
    )
    # what is left of the width for the text (each column is padded by a space on each side)
    room = max(TEXT_WIDTH, console.width - fixed - 2 * 4)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("title", no_wrap=True)
    table.add_column("text", no_wrap=True)
    table.add_column("document", no_wrap=True)
    for number, score, title, hit, doc in zip(ranks, scores, titles, hits, ids, strict=True):
        # the text on one line (its whitespace as spaces), cut to the room there is
        table.add_row(number, score, title, _cut(" ".join((hit.text or "").split()), room), doc)
    console.print(table)
    return OK


def _cut(value: str, width: int) -> Text:
    text = Text(value)
    text.truncate(width, overflow="ellipsis")
    return text


def libraries(args: argparse.Namespace, session: Session) -> int:
    target = session.open()
    found = target.db.list_libraries()
    if args.json:
        for lib in found:
            print(json.dumps(_library_json(lib), ensure_ascii=False, default=str), flush=True)
        return OK
    if not found:
        print(f"no libraries on {session.where}", file=sys.stderr)
        return OK
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("name", "id"):
        table.add_column(name, overflow="fold")
    for name in ("documents", "chunks", "dimension"):
        table.add_column(name, justify="right", no_wrap=True)
    for name in ("metric", "index", "embedder"):
        table.add_column(name, no_wrap=True)
    for lib in found:
        table.add_row(
            Text(lib.name),
            lib.id,
            str(lib.document_count),
            str(lib.chunk_count),
            "-" if lib.dimension is None else str(lib.dimension),
            lib.metric,
            lib.index,
            Text(lib.embedder or "none (vectors)"),
        )
    _console().print(table)
    return OK


def _library_json(lib: Library) -> dict[str, Any]:
    return {
        "id": lib.id,
        "name": lib.name,
        "description": lib.description,
        "document_count": lib.document_count,
        "chunk_count": lib.chunk_count,
        "dimension": lib.dimension,
        "metric": lib.metric,
        "index": lib.index,
        "embedder": lib.embedder,
        "metadata": dict(lib.metadata),
    }


def _console() -> Console:
    """Standard output; as wide as the terminal, or when it is not one (and ``COLUMNS`` does
    not say), wide enough for the tables not to wrap."""
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(highlight=False, width=width)
