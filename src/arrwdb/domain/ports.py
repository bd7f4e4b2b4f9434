"""Ports: what the domain needs from the outside world, as small ``typing.Protocol``s.

Adapters implement them (``arrwdb.adapters``); the container picks one per port from
configuration. The domain never imports an adapter. Each method says what it promises and which
domain error it raises; anything else an adapter raises is a bug (reported as ``internal_error``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from arrwdb.domain.events import Event, StartPoint
from arrwdb.domain.models import Document, IndexParams, Library, Matrix, Metric, Page

Labels = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float32]


@runtime_checkable
class VectorIndex(Protocol):
    """A nearest-neighbour index over float32 vectors identified by int64 labels.

    Vectors handed to an index are already validated (finite, ``float32``, C-contiguous, of
    the index's dimension); an index does not validate again. Scores are larger-is-better:
    cosine similarity, negative Euclidean distance (``l2``) or inner product (``ip``).
    Implementations are safe for concurrent ``search`` calls; ``add``/``remove`` are called
    with no concurrent ``search`` (the service holds the library's write lock).
    """

    @property
    def dimension(self) -> int: ...

    @property
    def metric(self) -> Metric: ...

    def __len__(self) -> int:
        """Number of live (not removed) vectors."""
        ...

    def add(self, labels: Labels, vectors: Matrix) -> None:
        """Insert ``vectors[i]`` under ``labels[i]`` (non-negative; a present label's vector
        is replaced, a removed one may be added again)."""
        ...

    def remove(self, labels: Labels) -> None:
        """Remove labels; a removed label is never returned by ``search`` again.
        Unknown labels are ignored."""
        ...

    def search(
        self,
        queries: Matrix,
        k: int,
        *,
        allowed: Labels | None = None,
        ef: int | None = None,
    ) -> tuple[Labels, Scores]:
        """The ``k`` best labels per query row, best first, with their scores.

        ``queries`` is ``(n, dimension)``. The result arrays are ``(n, k)``; where fewer than
        ``k`` labels qualify, rows are padded with label ``-1`` and score ``-inf``.
        ``allowed``, when given, is a sorted array of labels: only those may be returned, and
        the result is the ``k`` best *among them* (not the ``k`` best, then filtered).
        ``ef`` widens an approximate index's search (ignored by an exact one).
        """
        ...

    def get_vectors(self, labels: Labels) -> Matrix:
        """The vectors of ``labels`` as stored, ``(len(labels), dimension)``: normalised
        under cosine. Raises ``KeyError`` for a label not in the index."""
        ...


@dataclass(frozen=True, slots=True)
class SavedIndex:
    """An index as an ``IndexStore`` kept it, with the chunk id of every label it was given."""

    index: VectorIndex
    #: ``chunk_ids[label]``: the chunk a label stood for when saved; ``None`` once removed.
    chunk_ids: Sequence[str | None]


class IndexStore(Protocol):
    """Keeps built indexes between runs, so that opening a store does not rebuild them.

    A saved index is a cache, never the truth: the repository is. On open the service takes the
    saved index and reconciles it with the stored chunks (indexes the chunks it lacks, removes
    the labels of chunks that are gone), so a stale, missing or unreadable save costs time,
    never a wrong answer. Chunk ids are never reused for other content, which is what makes a
    chunk id a sufficient key. A store may keep only some kinds (an exact index is rebuilt
    about as fast as it is read): ``load`` then returns ``None`` and ``save`` does nothing.
    """

    def load(self, library: Library) -> SavedIndex | None:
        """The index last saved for ``library``, if one is kept that matches its kind,
        dimension, metric and parameters; ``None`` otherwise (an unreadable save is logged and
        ignored, not raised)."""
        ...

    def save(self, library: Library, index: VectorIndex, chunk_ids: Sequence[str | None]) -> None:
        """Keep ``index`` (called with no concurrent change to it), replacing the previous save
        of the library atomically. Raises ``StorageError``; the previous save then stays."""
        ...

    def discard(self, library_id: str) -> None:
        """Forget a library's saved index (the library was deleted)."""
        ...

    def retain(self, library_ids: Sequence[str]) -> None:
        """Forget the saved indexes of every library not in ``library_ids``."""
        ...


class IndexFactory(Protocol):
    """Builds an empty index of a kind (``flat``, ``hnsw``) for one library."""

    def __call__(
        self, kind: str, dimension: int, metric: Metric, params: IndexParams
    ) -> VectorIndex:
        """Raises ``InvalidArgumentError`` for an unknown kind."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """Turns text into vectors."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int | None:
        """The dimension it produces, or ``None`` if it can produce any requested one."""
        ...

    def embed(self, texts: Sequence[str], dimension: int | None = None) -> Matrix:
        """Embed ``texts`` into a ``(len(texts), d)`` float32 matrix of finite values.

        ``dimension`` asks for ``d``; an embedder with a fixed dimension raises
        ``DimensionMismatchError`` when it differs.
        """
        ...


class Commit(Protocol):
    """A write that a repository has put in order but may not have made durable yet."""

    def wait(self) -> None:
        """Return once the write is durable (as the store's policy promises) and visible to
        reads. Raises ``StorageError`` if it never will be: it is then not visible, and the
        store refuses later writes (``check`` raises). Called once per write, in any thread,
        without the service's commit lock: concurrent writers share the durability work (one
        fsync for all the records written meanwhile: group commit)."""
        ...


class Repository(Protocol):
    """Storage of libraries and documents (with their chunks and embeddings).

    Every write receives the event(s) that describe it, so that a durable store can log the
    change and its event in one atomic record. A write is two steps: the call puts it in order
    (the service calls writes under its commit lock, one at a time) and returns a ``Commit``;
    ``Commit.wait()``, called outside that lock, returns once the write is durable and visible.
    After ``wait`` returns, the change and its events survive a crash; if the call or ``wait``
    raises ``StorageError``, neither is visible. Writes become visible in call order. Reads may
    run concurrently with each other and with writes, and see each write entirely or not at all.
    """

    def save_library(self, library: Library, event: Event | None) -> Commit:
        """Create or replace a library's record (not its documents)."""
        ...

    def delete_library(self, library_id: str, event: Event) -> Commit:
        """Delete a library and all of its documents."""
        ...

    def get_library(self, library_id: str) -> Library | None: ...

    def list_libraries(self) -> list[Library]:
        """Every library, in creation order."""
        ...

    def save_documents(
        self, library: Library, documents: Sequence[Document], events: Sequence[Event]
    ) -> Commit:
        """Add or replace ``documents`` (with their chunks) and store ``library``'s new record
        (its counts), atomically."""
        ...

    def delete_document(self, library: Library, document_id: str, event: Event) -> Commit:
        """Delete one document and store ``library``'s new record, atomically."""
        ...

    def get_document(self, library_id: str, document_id: str) -> Document | None:
        """A document with its chunks and their embeddings."""
        ...

    def list_documents(self, library_id: str, limit: int, cursor: str | None) -> Page:
        """Documents in insertion order, without chunks. ``cursor`` comes from a previous
        page's ``next_cursor``; a cursor this store did not issue raises
        ``InvalidArgumentError``."""
        ...

    def iter_documents(self, library_id: str) -> Iterator[Document]:
        """Every document of a library with its chunks and embeddings (used to build indexes
        on open)."""
        ...

    def recent_events(self, limit: int) -> list[Event]:
        """Up to ``limit`` of the latest stored events, oldest first (empty for a store that
        keeps none). The service continues event ids after the last of them."""
        ...

    def check(self) -> None:
        """Raise ``StorageError`` if the store cannot serve (readiness probe)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Backup(Protocol):
    """A repository that can copy itself (a durable store; an in-memory one cannot)."""

    def snapshot_to(self, destination: str | os.PathLike[str]) -> Path:
        """Write a copy of the whole store, consistent as of one moment (writes go on), into
        the empty or new directory ``destination``; it opens as a store on its own. Returns
        the file written. Raises ``StorageError``."""
        ...


class Subscription(Protocol):
    """A subscriber's position in the change stream.

    Delivers every matching event after its start point exactly once, in id order. It reads
    from the bus's shared bounded history, so a subscriber costs no memory per event; one that
    falls more than its buffer behind (or behind the retained history) is closed with
    ``SlowConsumerError`` and never slows the others.
    """

    @property
    def reset(self) -> bool:
        """True when the requested start point was no longer retained (or unknown): the stream
        then starts live, and the consumer must resynchronise."""
        ...

    @property
    def last_id(self) -> str | None:
        """The id of the last event delivered (the value to resume from)."""
        ...

    def get(self, timeout: float | None = None) -> Event | None:
        """Block for the next event; ``None`` after ``timeout`` seconds without one.
        Raises ``SlowConsumerError`` or ``SubscriptionClosedError`` once closed."""
        ...

    async def aget(self, timeout: float | None = None) -> Event | None:
        """``get`` for a coroutine on an asyncio event loop; never blocks the loop."""
        ...

    def poll(self) -> Event | None:
        """The next event if one is ready, without waiting."""
        ...

    def close(self) -> None:
        """Unsubscribe. Idempotent."""
        ...


class EventBus(Protocol):
    """Publishes committed changes to subscribers and keeps a bounded history for resuming."""

    def publish(self, event: Event) -> None:
        """Append ``event`` (its id is one more than the last) and wake subscribers.
        Never blocks on a subscriber."""
        ...

    def subscribe(
        self,
        library_id: str | None,
        start: StartPoint,
        types: frozenset[str] | None = None,
        buffer: int | None = None,
    ) -> Subscription:
        """Register a subscriber (before returning: nothing published after this call is
        missed) to one library's events (``None``: all) of ``types`` (``None``: all).
        ``buffer`` bounds how many live events it may fall behind."""
        ...

    def restore(self, events: Sequence[Event]) -> None:
        """Seed the history with stored events (at startup, before any publish)."""
        ...

    @property
    def last_id(self) -> int:
        """The id of the last event published or restored (0 if none)."""
        ...

    def close(self) -> None:
        """Close every subscription (``SubscriptionClosedError`` after their backlog)."""
        ...
