"""Every operation of the client as one HTTP request: what to send and how to read the answer.
The sync and the async client run the same calls (``sync.py``, ``aio.py``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.models import Document, Library, Page, SearchResult
from arrwdb.domain.watches import Watch
from arrwdb.remote import _wire

T = TypeVar("T")

#: The most a bulk add sends in one request (each request is one commit on the server).
BULK_REQUEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request: ``decode`` turns the answer's JSON (``None`` for an empty one) into the
    result. A ``write`` carries an idempotency key, so that retrying it is safe."""

    method: str
    path: str
    decode: Callable[[Any], T]
    body: Any = None
    params: Mapping[str, Any] | None = None
    write: bool = False


def _nothing(_: Any) -> None:
    return None


def _lib(library_id: str) -> str:
    return f"/v1/libraries/{quote(library_id, safe='')}"


def _doc(library_id: str, document_id: str) -> str:
    return f"{_lib(library_id)}/documents/{quote(document_id, safe='')}"


# -- libraries ------------------------------------------------------------------------------


def create_library(name: str, fields: Mapping[str, Any], exist_ok: bool = False) -> Call[Library]:
    """``fields`` as ``create_library`` takes them: ``None`` is left out, but ``embedder=None``
    is sent (a vectors-only library) and ``embedder=...`` left out (the server's default)."""
    body: dict[str, Any] = {"name": name}
    for key, value in fields.items():
        if (key == "embedder" and value is not ...) or (key != "embedder" and value is not None):
            body[key] = value
    params = {"exist_ok": "true"} if exist_ok else None
    return Call("POST", "/v1/libraries", _wire.library, body, params, write=True)


def get_library(library_id: str) -> Call[Library]:
    return Call("GET", _lib(library_id), _wire.library)


def list_libraries() -> Call[list[Library]]:
    return Call("GET", "/v1/libraries", lambda d: [_wire.library(x) for x in d["libraries"]])


def update_library(library_id: str, changes: Mapping[str, Any]) -> Call[Library]:
    unknown = set(changes) - {"name", "description", "metadata"}
    if unknown:
        raise InvalidArgumentError(
            f"a library's {', '.join(sorted(unknown))} cannot be changed "
            "(name, description and metadata can)",
            field=sorted(unknown)[0],
        )
    return Call("PATCH", _lib(library_id), _wire.library, dict(changes), write=True)


def delete_library(library_id: str) -> Call[None]:
    return Call("DELETE", _lib(library_id), _nothing, write=True)


# -- documents ------------------------------------------------------------------------------


def add_document(library_id: str, document: Mapping[str, Any]) -> Call[Document]:
    body = _wire.document_body(document)
    return Call("POST", f"{_lib(library_id)}/documents", _wire.document, body, write=True)


def add_documents(library_id: str, documents: Iterable[Any]) -> list[Call[list[Document]]]:
    """The documents in requests of at most ``BULK_REQUEST_BYTES`` of JSON each (all encoded
    before the first is sent: a document that cannot be sent fails the call before any write)."""
    calls: list[Call[list[Document]]] = []
    batch: list[bytes] = []
    size = 0
    for doc in documents:
        encoded = _wire.encode(_wire.document_body(doc))
        if batch and size + len(encoded) > BULK_REQUEST_BYTES:
            calls.append(_bulk(library_id, batch))
            batch, size = [], 0
        batch.append(encoded)
        size += len(encoded) + 1
    if batch:
        calls.append(_bulk(library_id, batch))
    return calls


def _bulk(library_id: str, encoded: list[bytes]) -> Call[list[Document]]:
    body = _Raw(b"[" + b",".join(encoded) + b"]")
    return Call("POST", f"{_lib(library_id)}/documents", _wire.documents, body, write=True)


@dataclass(frozen=True, slots=True)
class _Raw:
    """A body already encoded as JSON."""

    data: bytes


def body_bytes(body: Any) -> bytes:
    return body.data if isinstance(body, _Raw) else _wire.encode(body)


def get_document(library_id: str, document_id: str, include_embedding: bool) -> Call[Document]:
    params = {"include_embedding": "true"} if include_embedding else None
    return Call("GET", _doc(library_id, document_id), _wire.document, params=params)


def list_documents(library_id: str, limit: int, cursor: str | None) -> Call[Page]:
    params: dict[str, Any] = {"limit": limit}
    if cursor is not None:
        params["cursor"] = cursor
    return Call("GET", f"{_lib(library_id)}/documents", _wire.page, params=params)


def update_document(
    library_id: str, document_id: str, changes: Mapping[str, Any]
) -> Call[Document]:
    body = dict(changes)
    if body.get("chunks") is not None:
        body["chunks"] = _wire.document_body({"chunks": body["chunks"]})["chunks"]
    return Call("PATCH", _doc(library_id, document_id), _wire.document, body, write=True)


def upsert_document(
    library_id: str, document_id: str, document: Mapping[str, Any]
) -> Call[Document]:
    body = _wire.document_body({**document, "id": None})
    return Call("PUT", _doc(library_id, document_id), _wire.document, body, write=True)


def query_documents(library_id: str, fields: Mapping[str, Any]) -> Call[Page]:
    body = {k: v for k, v in fields.items() if v is not None}
    return Call("POST", f"{_lib(library_id)}/documents/query", _wire.page, body)


def count(library_id: str, filter: Mapping[str, Any] | None) -> Call[int]:
    body = {} if filter is None else {"filter": filter}
    return Call("POST", f"{_lib(library_id)}/documents/count", lambda d: int(d["count"]), body)


def delete_documents(
    library_id: str, ids: Sequence[str] | None, filter: Mapping[str, Any] | None
) -> Call[int]:
    body = {k: v for k, v in (("ids", ids), ("filter", filter)) if v is not None}
    return Call(
        "POST",
        f"{_lib(library_id)}/documents/delete",
        lambda d: int(d["deleted"]),
        body,
        write=True,
    )


def upserted(library_id: str, results: Iterable[Any]) -> list[str]:
    """The ids an NDJSON upsert wrote, in order; the first refused line is raised."""
    ids: list[str] = []
    for result in results:
        if not result.success:
            problem = {"code": result.code, "detail": result.error, "field": result.field}
            raise _wire.problem_error(422, problem, result.error or "")
        ids.append(result.document_id)
    return ids


def delete_document(library_id: str, document_id: str) -> Call[None]:
    return Call("DELETE", _doc(library_id, document_id), _nothing, write=True)


# -- search ---------------------------------------------------------------------------------


def search(library_id: str, query: Any, k: int, options: Mapping[str, Any]) -> Call[SearchResult]:
    body = _wire.search_body(query, k, options)
    return Call("POST", f"{_lib(library_id)}/search", _wire.search_result, body)


def search_many_lines(queries: Iterable[Any], k: int, options: Mapping[str, Any]) -> bytes:
    """The NDJSON body of a batch search (``POST .../search/stream``)."""
    return b"".join(_wire.encode(_wire.search_body(q, k, options)) + b"\n" for q in queries)


def search_many_results(answer: str) -> list[SearchResult]:
    """The results of a batch search's NDJSON answer, in input order; the first failed line
    is raised as the error it reports."""
    results: list[SearchResult] = []
    for raw in answer.splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        if "summary" in line:
            continue
        if not line.get("success", True):
            raise _wire.problem_error(422, {**line, "detail": line.get("error")}, "")
        results.append(_wire.search_result(line))
    return results


# -- watches --------------------------------------------------------------------------------


def watch_path(library_id: str, watch_id: str) -> str:
    return f"{_lib(library_id)}/watches/{quote(watch_id, safe='')}"


def create_watch(
    library_id: str,
    query: Any,
    k: int | None,
    *,
    filter: Mapping[str, Any] | None = None,
    threshold: float | None = None,
) -> Call[Watch]:
    """``POST .../watches``: a top-k watch (``k``) or a match watch (``k=None``, a
    ``threshold``). Not sent with an idempotency key: the server does not take one here, and a
    watch made twice by a retry ends by itself when nobody listens to it."""
    body = _wire.query_fields(query)
    fields = (("k", k), ("threshold", threshold), ("filter", filter))
    body.update((name, value) for name, value in fields if value is not None)
    return Call("POST", f"{_lib(library_id)}/watches", lambda d: _wire.watch(d, query), body)


def delete_watch(library_id: str, watch_id: str) -> Call[None]:
    return Call("DELETE", watch_path(library_id, watch_id), _nothing, write=True)


def search_options(
    filter: Mapping[str, Any] | None,
    ef: int | None,
    include_embedding: bool,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    options: dict[str, Any] = {"filter": filter, "ef": ef}
    options.update((k, v) for k, v in extra.items() if v is not None)
    if include_embedding:
        options["include_embedding"] = True
    return options


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
