"""Reads of documents by ids, by filter, and counts: what ``get_documents``,
``query_documents`` and ``count_documents`` answer.

They read the store's tables (``ports.Repository``: the durable state, which a write has
reached once it returns), never the index. A filter here is matched against each
**document's** metadata (the chunks' metadata is not looked at: a document-level call asks
about documents), whereas a search matches each chunk's metadata merged over its document's.
Documents come without their chunks, as in a listing (``get_document`` reads one with them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from arrwdb.domain import validation as v
from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.filters import MATCH_ALL, Predicate, compile_filter
from arrwdb.domain.limits import PAGE_LIMIT
from arrwdb.domain.models import Document, Library, Page
from arrwdb.domain.ports import Repository

#: How many ids one query may ask for (the largest page).
MAX_IDS = PAGE_LIMIT.high
#: The default page size of a query without ids (as for a listing).
DEFAULT_LIMIT = 100
#: How the cursor of a query by ids begins (then the offset in its ids): a listing's cursor
#: is digits only, so neither can be taken for the other.
_IDS_CURSOR = "ids:"


def check_ids(ids: object, field: str = "ids", most: int | None = None) -> list[str]:
    """A list of document ids (strings), each once, in the order given."""
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidArgumentError(f"{field} must be a list of document ids", field=field)
    for i, item in enumerate(ids):
        if not isinstance(item, str):
            raise InvalidArgumentError(f"{field}[{i}] must be a string", field=f"{field}[{i}]")
    unique = list(dict.fromkeys(ids))
    if most is not None and len(unique) > most:
        raise InvalidArgumentError(
            f"{field} names {len(unique)} documents; at most {most} may be asked at once",
            field=field,
        )
    return unique


def document_filter(spec: Mapping[str, Any] | None) -> Predicate | None:
    """A filter on document metadata, compiled (``None`` for none, or one that matches all)."""
    if spec is None:
        return None
    predicate = compile_filter(spec)
    return None if predicate is MATCH_ALL else predicate


def query_documents(
    repo: Repository,
    library_id: str,
    *,
    ids: Sequence[str] | None = None,
    filter: Mapping[str, Any] | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page:
    """The documents that meet every condition given: among ``ids`` (in the order asked,
    each once, unknown ones left out) and matching ``filter``. Without ``ids`` they come in
    insertion order, ``limit`` (default 100) to a page; with ``ids`` (at most ``MAX_IDS``)
    every one found is on the page unless ``limit`` is given. Follow ``next_cursor`` for the
    next page."""
    where = document_filter(filter)
    size = None if limit is None else v.check_page_limit(limit)
    if ids is None:
        return repo.list_documents(library_id, size or DEFAULT_LIMIT, cursor, where)
    wanted = check_ids(ids, most=MAX_IDS)
    start = _ids_offset(cursor, len(wanted))
    size = size or len(wanted) or 1
    found: list[Document] = []
    for offset in range(start, len(wanted)):
        doc = repo.get_document(library_id, wanted[offset])
        if doc is None or (where is not None and not where(doc.metadata)):
            continue
        if len(found) == size:  # one more is there: the page ends before it
            return Page(documents=found, next_cursor=f"{_IDS_CURSOR}{offset}")
        found.append(replace(doc, chunks=()) if doc.chunks else doc)
    return Page(documents=found, next_cursor=None)


def deletion(
    ids: Sequence[str] | None, filter: Mapping[str, Any] | None
) -> tuple[list[str] | None, Predicate | None]:
    """What a ``delete_documents`` deletes: ``(ids, None)`` or ``(None, predicate)``
    (exactly one of ``ids`` and ``filter`` is given; ``{}`` matches every document)."""
    if (ids is None) == (filter is None):
        raise InvalidArgumentError(
            "give exactly one of ids and filter" + ("" if ids is None else ", not both"),
            field="ids" if ids is None else "filter",
        )
    if ids is not None:
        return check_ids(ids), None
    return None, compile_filter(filter)


def count_documents(
    repo: Repository, library: Library, filter: Mapping[str, Any] | None = None
) -> int:
    """How many documents the library holds (whose metadata matches ``filter``)."""
    where = document_filter(filter)
    if where is None:
        return library.document_count
    return repo.count_documents(library.id, where)


def _ids_offset(cursor: str | None, count: int) -> int:
    if cursor is None or cursor == "":
        return 0
    digits = cursor[len(_IDS_CURSOR) :]
    if (
        not cursor.startswith(_IDS_CURSOR)
        or not (0 < len(digits) <= 5 and digits.isascii() and digits.isdigit())
        or int(digits) > count
    ):
        raise InvalidArgumentError(
            f"invalid cursor {cursor[:40]!r} for a query by ids", field="cursor"
        )
    return int(digits)
