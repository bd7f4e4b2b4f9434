"""The write rules: what each write checks, and the changes it makes, against the state every
earlier write leaves (``ports.Head``).

Each function returns a ``Build``: the service hands it to the store, which runs it where the
writes are put in order (``ChangeLog.write``), so a check and the write it guards can never be
separated by another write, and a read-modify-write (a PATCH) reads the version it replaces
under the same ordering as the write itself. A build raises the domain error of a broken rule,
and then nothing is written. Everything slow (chunking, embedding, validating vectors) is done
before, outside the ordering (``_documents.DocumentBuilder.prepare``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from arrwdb.domain import validation as v
from arrwdb.domain._documents import PreparedBatch
from arrwdb.domain.changes import (
    Change,
    DocumentDeleted,
    DocumentSaved,
    LibraryCreated,
    LibraryDeleted,
    LibraryUpdated,
)
from arrwdb.domain.errors import (
    AlreadyExistsError,
    DimensionMismatchError,
    DocumentNotFoundError,
    InvalidArgumentError,
    LibraryNotFoundError,
    LimitExceededError,
)
from arrwdb.domain.filters import Predicate
from arrwdb.domain.models import Document, Library, utcnow
from arrwdb.domain.ports import Build, Head


def create_library(library: Library, max_libraries: int | None = None) -> Build:
    def build(head: Head) -> Sequence[Change]:
        if head.library_named(library.name) is not None:
            raise AlreadyExistsError(
                f"a library named {library.name!r} already exists", name=library.name
            )
        if max_libraries is not None and head.library_count() >= max_libraries:
            raise LimitExceededError(
                f"this store holds {max_libraries} libraries already, the limit (max_libraries)",
                limit="max_libraries",
                field="name",
            )
        return [LibraryCreated(library, library.created_at)]

    return build


def get_or_create_library(
    library: Library, max_libraries: int | None, *, compare_dimension: bool, found: list[Library]
) -> Build:
    """``library``, unless one of its name exists: then nothing, and that one in ``found`` if
    its dimension (``compare_dimension``), metric and index are ``library``'s (else
    ``AlreadyExistsError`` naming what differs)."""
    create = create_library(library, max_libraries)

    def build(head: Head) -> Sequence[Change]:
        existing = head.library_named(library.name)
        if existing is None:
            return create(head)
        fields = ("dimension", "metric", "index") if compare_dimension else ("metric", "index")
        differ = [f for f in fields if getattr(existing, f) != getattr(library, f)]
        if differ:
            shown = ", ".join(f"{f} {getattr(existing, f)!r}" for f in differ)
            raise AlreadyExistsError(
                f"a library named {library.name!r} already exists with {shown}",
                name=library.name,
                field=differ[0],
            )
        found.append(existing)
        return []

    return build


def update_library(library_id: str, fields: Mapping[str, Any]) -> Build:
    def build(head: Head) -> Sequence[Change]:
        old = _library(head, library_id)
        name = fields.get("name", old.name)
        if name != old.name and head.library_named(name) is not None:
            raise AlreadyExistsError(f"a library named {name!r} already exists", name=name)
        changed = {k: v for k, v in fields.items() if not _same(getattr(old, k), v)}
        if not changed:
            return []  # nothing to change: nothing is written, no event
        at = utcnow()
        new = replace(old, **changed, updated_at=at)
        return [LibraryUpdated(new, tuple(sorted(changed)), at)]

    return build


def delete_library(library_id: str) -> Build:
    def build(head: Head) -> Sequence[Change]:
        old = _library(head, library_id)
        return [LibraryDeleted(library_id, old.name, utcnow())]

    return build


def add_documents(library_id: str, batch: PreparedBatch) -> Build:
    """New documents only: a given id that is taken (or given twice) is refused."""

    def build(head: Head) -> Sequence[Change]:
        _check_dimension(_library(head, library_id), batch)
        seen: set[str] = set()
        for doc in batch.documents:
            if doc.id in seen:
                raise AlreadyExistsError(
                    f"document id {doc.id!r} is given twice in one batch", document_id=doc.id
                )
            if head.document(library_id, doc.id) is not None:
                raise AlreadyExistsError(f"document id {doc.id!r} is taken", document_id=doc.id)
            seen.add(doc.id)
        at = utcnow()
        return [DocumentSaved(doc, False, at) for doc in batch.documents]

    return build


def upsert_documents(library_id: str, batch: PreparedBatch) -> Build:
    """Each document added, or replacing (content, title and metadata) the one of its id:
    which of the two is decided here, under the write's ordering (``DocumentSaved.replaced``).
    An id given twice in one batch is refused."""

    def build(head: Head) -> Sequence[Change]:
        _check_dimension(_library(head, library_id), batch)
        at = utcnow()
        seen: set[str] = set()
        changes: list[Change] = []
        many = len(batch.documents) > 1
        for i, doc in enumerate(batch.documents):
            if doc.id in seen:
                raise InvalidArgumentError(
                    f"document id {doc.id!r} is given twice in one upsert",
                    field=f"documents[{i}].id" if many else "id",
                )
            seen.add(doc.id)
            old = head.document(library_id, doc.id)
            if old is None:
                changes.append(DocumentSaved(doc, False, at))
            else:
                new = replace(doc, created_at=old.created_at, updated_at=at)
                changes.append(DocumentSaved(new, True, at))
        return changes

    return build


def replace_content(
    library_id: str,
    document_id: str,
    batch: PreparedBatch,
    title: str | None,
    metadata: Mapping[str, Any] | None,
    max_metadata_bytes: int | None = None,
) -> Build:
    """New chunks for an existing document; its title stays unless given, its metadata is
    merged with ``metadata`` (``merge_metadata``)."""

    def build(head: Head) -> Sequence[Change]:
        old = _document(head, library_id, document_id)
        _check_dimension(_library(head, library_id), batch)
        at = utcnow()
        doc = replace(
            batch.documents[0],
            title=old.title if title is None else title,
            metadata=merge_metadata(old.metadata, metadata, max_metadata_bytes),
            created_at=old.created_at,
            updated_at=at,
        )
        return [DocumentSaved(doc, True, at)]

    return build


def update_fields(
    library_id: str,
    document_id: str,
    title: str | None,
    metadata: Mapping[str, Any] | None,
    max_metadata_bytes: int | None = None,
) -> Build:
    """A new title, or metadata merged into the old (``merge_metadata``), on the same
    chunks."""

    def build(head: Head) -> Sequence[Change]:
        old = _document(head, library_id, document_id)
        new_title = old.title if title is None else title
        new_metadata = merge_metadata(old.metadata, metadata, max_metadata_bytes)
        if new_title == old.title and _same(new_metadata, old.metadata):
            return []  # nothing to change: nothing is written, no event
        at = utcnow()
        doc = replace(old, title=new_title, metadata=new_metadata, updated_at=at)
        return [DocumentSaved(doc, True, at)]

    return build


def merge_metadata(
    old: Mapping[str, Any], patch: Mapping[str, Any] | None, max_bytes: int | None = None
) -> Mapping[str, Any]:
    """``old`` with ``patch`` applied as a JSON Merge Patch (RFC 7396): a key whose value is
    ``None`` is removed, any other is set. (Metadata values are scalars or lists of them,
    never objects, so the merge is per top-level key.) Raises ``PayloadTooLargeError`` when
    the result takes more than ``max_bytes``."""
    if patch is None or not patch:
        return old
    merged = dict(old)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    if max_bytes is not None:
        v.check_metadata_size(merged, max_bytes)
    return merged


def delete_document(library_id: str, document_id: str) -> Build:
    def build(head: Head) -> Sequence[Change]:
        old = _document(head, library_id, document_id)
        return [DocumentDeleted(library_id, document_id, old.title, utcnow())]

    return build


def delete_documents(
    library_id: str, ids: Sequence[str] | None = None, where: Predicate | None = None
) -> Build:
    """Delete the documents of ``ids`` that exist (each once), or every document whose
    (document) metadata ``where`` matches, as the state is under the write's ordering: a
    document added meanwhile that matches is deleted too. One change per document, one
    commit; none when nothing matches."""

    def build(head: Head) -> Sequence[Change]:
        _library(head, library_id)
        at = utcnow()
        if ids is not None:
            found = (head.document(library_id, i) for i in dict.fromkeys(ids))
            gone = [doc for doc in found if doc is not None]
        else:
            assert where is not None
            gone = [doc for doc in head.documents(library_id) if where(doc.metadata)]
        return [DocumentDeleted(library_id, doc.id, doc.title, at) for doc in gone]

    return build


def _library(head: Head, library_id: str) -> Library:
    library = head.library(library_id)
    if library is None:
        raise LibraryNotFoundError(library_id)
    return library


def _document(head: Head, library_id: str, document_id: str) -> Document:
    _library(head, library_id)
    doc = head.document(library_id, document_id)
    if doc is None:
        raise DocumentNotFoundError(document_id, library_id)
    return doc


def _check_dimension(library: Library, batch: PreparedBatch) -> None:
    """The library's dimension may have been fixed since the batch was prepared."""
    if library.dimension is not None and library.dimension != batch.dimension:
        raise DimensionMismatchError(library.dimension, batch.dimension, what="embedding")


def _same(a: object, b: object) -> bool:
    """Equal as JSON values are: ``1``, ``1.0`` and ``true`` differ (Python's ``==`` says
    they are equal)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
