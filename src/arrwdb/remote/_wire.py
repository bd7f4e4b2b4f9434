"""JSON to the models of ``arrwdb`` and back, and a server's problems back into the
exceptions the in-process API raises (rebuilt from their ``code``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
import numpy as np

from arrwdb.domain import errors
from arrwdb.domain.events import Event
from arrwdb.domain.models import (
    Chunk,
    Document,
    IndexParams,
    Library,
    NewChunk,
    NewDocument,
    Page,
    SearchHit,
    SearchResult,
)
from arrwdb.domain.watches import Watch, WatchEvent


class ServerUnavailableError(errors.ArrwdbError):
    """The server could not be reached (refused, reset, timed out) or kept answering that it
    is shutting down, for longer than the client retries."""

    code = "unavailable"


# -- JSON -> models -------------------------------------------------------------------------


def timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


def library(d: Mapping[str, Any]) -> Library:
    p = d.get("index_params") or {}
    return Library(
        id=d["id"],
        name=d["name"],
        description=d.get("description", ""),
        metadata=d.get("metadata") or {},
        dimension=d.get("dimension"),
        metric=d.get("metric", "cosine"),
        index=d.get("index", "hnsw"),
        index_params=IndexParams(**p),
        embedder=d.get("embedder"),
        document_count=d.get("document_count", 0),
        chunk_count=d.get("chunk_count", 0),
        created_at=timestamp(d["created_at"]),
        updated_at=timestamp(d["updated_at"]),
    )


def _vector(value: Sequence[float] | None) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float32)


def document(d: Mapping[str, Any]) -> Document:
    return Document(
        id=d["id"],
        library_id=d["library_id"],
        title=d.get("title", ""),
        metadata=d.get("metadata") or {},
        num_chunks=d.get("num_chunks", 0),
        created_at=timestamp(d["created_at"]),
        updated_at=timestamp(d["updated_at"]),
        chunks=tuple(
            Chunk(
                id=c["id"],
                document_id=c["document_id"],
                position=c["position"],
                text=c.get("text", ""),
                metadata=c.get("metadata") or {},
                embedding=_vector(c.get("embedding")),
            )
            for c in d.get("chunks") or ()
        ),
    )


def documents(d: Any) -> list[Document]:
    return [document(x) for x in (d if isinstance(d, list) else [d])]


def page(d: Mapping[str, Any]) -> Page:
    return Page([document(x) for x in d["documents"]], d.get("next_cursor"))


def search_result(d: Mapping[str, Any]) -> SearchResult:
    return SearchResult(
        results=[
            SearchHit(
                chunk_id=h["chunk_id"],
                document_id=h["document_id"],
                document_title=h.get("document_title", ""),
                text=h.get("text"),  # None when the search's include leaves it out
                score=float(h["score"]),
                metadata=h.get("metadata"),
                position=h.get("position", 0),
                embedding=_vector(h.get("embedding")),
            )
            for h in d["results"]
        ],
        took_ms=float(d.get("took_ms", 0.0)),
    )


def event(envelope: Mapping[str, Any]) -> Event:
    stamp = envelope.get("timestamp")
    return Event(
        id=str(envelope["id"]),
        type=envelope["type"],
        library_id=envelope.get("library_id"),
        data=envelope.get("data") or {},
        **({"timestamp": timestamp(stamp)} if isinstance(stamp, str) else {}),
    )


def watch(d: Mapping[str, Any], query: Any) -> Watch:
    """A watch the server made (``POST .../watches``) for ``query``: its ``vector`` is the
    query vector as sent (empty for a text query: the server embeds it)."""
    text = query if isinstance(query, str) else None
    vector = np.empty(0, dtype=np.float32) if text is not None else np.asarray(query, np.float32)
    return Watch(
        id=d["id"],
        library_id=d["library_id"],
        k=d.get("k"),
        threshold=d.get("threshold"),
        filter=d.get("filter"),
        created_at=timestamp(d["created_at"]),
        vector=vector,
        query_text=text,
    )


def watch_event(envelope: Mapping[str, Any]) -> WatchEvent:
    stamp = envelope.get("timestamp")
    return WatchEvent(
        id=str(envelope["id"]),
        type=envelope["type"],
        library_id=envelope.get("library_id") or "",
        watch_id=envelope.get("watch_id") or "",
        data=envelope.get("data") or {},
        **({"timestamp": timestamp(stamp)} if isinstance(stamp, str) else {}),
    )


# -- models -> JSON -------------------------------------------------------------------------


def _enc_hook(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise NotImplementedError(f"cannot send a {type(value).__name__} as JSON")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode(value: Any) -> bytes:
    """JSON of ``value`` (numpy arrays and scalars as lists and numbers)."""
    try:
        return _encoder.encode(value)
    except (NotImplementedError, TypeError) as exc:
        raise errors.InvalidArgumentError(str(exc)) from None


def _chunk(c: Any) -> Any:
    if isinstance(c, NewChunk):
        c = {"text": c.text, "embedding": c.embedding, "metadata": c.metadata}
    if not isinstance(c, Mapping):
        return c  # sent as it is: the server says what is wrong with it
    return {k: v for k, v in c.items() if v is not None}


def document_body(doc: NewDocument | Mapping[str, Any]) -> dict[str, Any]:
    """A new document as the server takes it (``POST .../documents``)."""
    if isinstance(doc, NewDocument):
        fields: Mapping[str, Any] = {
            "title": doc.title,
            "text": doc.text,
            "chunks": doc.chunks,
            "metadata": doc.metadata,
            "id": doc.id,
        }
    elif isinstance(doc, Mapping):
        fields = doc
    else:
        raise errors.InvalidArgumentError(
            f"a document must be a mapping or a NewDocument, not {type(doc).__name__}",
            field="documents",
        )
    body = {k: v for k, v in fields.items() if v is not None}
    chunks = body.get("chunks")
    if isinstance(chunks, list | tuple):
        body["chunks"] = [_chunk(c) for c in chunks]
    return body


def query_fields(query: Any) -> dict[str, Any]:
    """``query_text`` or ``query_vector`` of a search body."""
    if isinstance(query, str):
        return {"query_text": query}
    if isinstance(query, np.ndarray | list | tuple):
        return {"query_vector": query}
    raise errors.InvalidArgumentError(
        f"a query is text or a vector, not {type(query).__name__}", field="query"
    )


def search_body(query: Any, k: int, options: Mapping[str, Any]) -> dict[str, Any]:
    body = {**query_fields(query), "k": k}
    body.update((name, value) for name, value in options.items() if value is not None)
    return body


# -- problems -> exceptions -----------------------------------------------------------------


def _by_code() -> dict[str, type[errors.ArrwdbError]]:
    found: dict[str, type[errors.ArrwdbError]] = {}
    pending: list[type[errors.ArrwdbError]] = [errors.ArrwdbError]
    while pending:
        cls = pending.pop()
        if not cls.__name__.startswith("_"):
            found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    found["not_found"] = errors.NotFoundError
    return found


_CLASSES = _by_code()


def problem_error(status: int, problem: Mapping[str, Any] | None, text: str) -> errors.ArrwdbError:
    """The exception a problem answer stands for: the class of its ``code`` (a 404 of a
    document is ``DocumentNotFoundError``, of a watch ``WatchNotFoundError``, of a library
    ``LibraryNotFoundError``), with the server's message and details."""
    problem = problem or {}
    code = str(problem.get("code") or _status_code(status))
    message = str(problem.get("detail") or text or f"HTTP {status}")
    details = {k: v for k, v in problem.items() if k not in ("type", "title", "detail", "code")}
    cls = _CLASSES.get(code)
    if code == "not_found":
        cls = _not_found(problem, message)
    if cls is None:
        cls = errors.ValidationError if 400 <= status < 500 else errors.ArrwdbError
    exc = cls.__new__(cls)
    errors.ArrwdbError.__init__(exc, message, **details)
    if cls.code != code:  # a code this client does not know (or a generic one): keep it
        exc.code = code  # type: ignore[misc]
    if isinstance(exc, errors.RateLimitedError):
        exc.retry_after = float(problem.get("retry_after") or 1.0)
    return exc


def _not_found(problem: Mapping[str, Any], message: str) -> type[errors.NotFoundError]:
    """What a 404 names: a document, a watch or (otherwise) a library."""
    field = problem.get("field")
    if field == "document_id" or message.startswith("document "):
        return errors.DocumentNotFoundError
    if field == "watch_id" or message.startswith("watch "):
        return errors.WatchNotFoundError
    return errors.LibraryNotFoundError


def _status_code(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        409: "already_exists",
        413: "payload_too_large",
        415: "unsupported_media_type",
        429: "rate_limited",
        503: "unavailable",
    }.get(status, "internal_error" if status >= 500 else "bad_request")


def types_param(types: Iterable[str] | None) -> str | None:
    return None if types is None else ",".join(types)
