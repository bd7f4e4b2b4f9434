"""Ports: what the domain needs from the outside world, as small ``typing.Protocol``s.

Adapters implement them (``arrwdb.adapters``); the container picks one per port from
configuration. The domain never imports an adapter. Each method says what it promises and which
domain error it raises; anything else an adapter raises is a bug (reported as ``internal_error``).

Who may change what: a ``Store`` changes its log and tables, only in ``ChangeLog.write`` and as
those writes become durable; an ``EventHub`` is published to only by the projector
(``arrwdb.domain.projection``), which is also the only writer of the in-memory projection
(``VectorIndex``es, chunk references, library records). Everything else reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from arrwdb.domain.changes import Batch, Change, Receipt, WriteKey
from arrwdb.domain.events import Event, StartPoint
from arrwdb.domain.filters import Predicate
from arrwdb.domain.models import ApiKey, Document, IndexParams, Library, Matrix, Metric, Page
from arrwdb.domain.watches import Watch

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

    def add(self, labels: Labels, vectors: Matrix, *, link: bool = True) -> None:
        """Insert ``vectors[i]`` under ``labels[i]`` (non-negative; a present label's vector
        is replaced, a removed one may be added again).

        ``link=False`` lets an approximate index leave its graph work for ``link``: the
        vectors are in at once for ``search_exact``, ``get_vectors`` and ``len``, and
        ``search`` links first (the projector links before it lets searches in)."""
        ...

    def link(self) -> None:
        """Finish the graph work of an ``add(..., link=False)`` (a no-op when there is
        none, and for an exact index)."""
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

    def search_exact(
        self, queries: Matrix, k: int, *, allowed: Labels | None = None
    ) -> tuple[Labels, Scores]:
        """``search``, exactly, whatever the index (an approximate one scans its vectors):
        what live queries refill their results with."""
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


class SerialCompute(Protocol):
    """While its context is open, numpy's matrix products (BLAS) run on the calling thread
    only. The projector scores a batch against a library's watches in it: a multi-threaded
    BLAS keeps its worker threads spinning for a while after a product, and they would take
    the cores from the index's graph work (hnswlib's threads) that follows."""

    def __call__(self) -> AbstractContextManager[object]: ...


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


class Head(Protocol):
    """The state every write ordered so far leaves: what a new write is checked against and
    built from (read only inside ``ChangeLog.write``'s ``build``, under the store's ordering)."""

    def library(self, library_id: str) -> Library | None: ...

    def library_named(self, name: str) -> Library | None: ...

    def library_count(self) -> int:
        """How many libraries there are."""
        ...

    def document(self, library_id: str, document_id: str) -> Document | None:
        """With its chunks and their embeddings."""
        ...

    def documents(self, library_id: str) -> Iterable[Document]:
        """A library's documents with their chunks, in listing order (none for an unknown
        library)."""
        ...

    def receipt(self, key: str) -> Receipt | None:
        """What the write made with idempotency key ``key`` left, if it is remembered (for
        ``changes.KEY_LIFETIME``)."""
        ...


#: What a write does, decided under the store's ordering: the changes to commit (empty: none),
#: or a domain error (``NotFoundError``, ``AlreadyExistsError``, ``ValidationError``).
Build = Callable[[Head], Sequence[Change]]


class Commit(Protocol):
    """A write that a store has put in order but may not have made durable yet."""

    def wait(self) -> Batch:
        """Return the write's changes at their positions once they are durable (as the
        store's policy promises) and visible to its reads. Raises ``StorageError`` if they
        never will be: then nothing of them is visible, and the store refuses later writes
        (``check`` raises). Called once, in any thread; concurrent writers share the
        durability work (one fsync for all the records written meanwhile: group commit)."""
        ...


class ChangeLog(Protocol):
    """The committed changes, in order: the one truth that everything in memory follows.

    Positions are consecutive integers from 1, without gaps, in commit order; the change
    event of a change has its position as id. A store arbitrates, where it orders writes, every
    rule that must hold across writers (a library name is unique, a document id is not taken,
    a library exists, its dimension is fixed): ``write`` runs the write's ``build`` against the
    state all earlier writes leave.
    """

    def write(self, build: Build, key: WriteKey | None = None) -> Commit:
        """Order one write: under the store's ordering, ``build(head)`` checks it and returns
        its changes, which take the next positions and are appended in one atomic record. If
        ``build`` raises, or the store cannot append (``StorageError``), nothing happened and
        no position was used. Returns before the write is durable (see ``Commit``).

        With an idempotency ``key`` (kept with the write): if a write with that key is
        remembered (``Head.receipt``), nothing is written and the commit gives that write's
        receipt batch instead (once it is durable); a key remembered with another fingerprint
        raises ``IdempotencyMismatchError``."""
        ...

    def read(self, after: int, limit: int) -> list[Batch]:
        """Durable batches with positions after ``after``, oldest first: whole batches, as
        many as fit in about ``limit`` changes (at least one, if there is one). Raises
        ``HistoryLostError`` when changes after ``after`` are no longer kept."""
        ...

    @property
    def head(self) -> int:
        """The position of the last durable change (0 for an empty log)."""
        ...

    def wait_for(self, after: int, timeout: float | None = None) -> int:
        """Block until ``head`` passes ``after`` (or ``timeout`` seconds pass); the head."""
        ...


@runtime_checkable
class SharedLog(Protocol):
    """A change log that other processes write to as well (a database several servers share):
    its head moves without a local write, so a ``projection.Follower`` waits on ``wait_for``
    and drives the projector after it."""

    @property
    def shared(self) -> bool:
        """Always true (a marker)."""
        ...

    @property
    def behind(self) -> int:
        """How many changes the shared log held, when last asked, that ``head`` lacks."""
        ...


@runtime_checkable
class EventHistory(Protocol):
    """Past change events, read back from where a store keeps its log (disk, a database), so
    that a subscriber that fell behind the in-memory history reads on instead of being cut."""

    @property
    def earliest(self) -> int:
        """The oldest position whose event is still kept (``head + 1`` when none is)."""
        ...

    def events_after(
        self, after: int, limit: int, library_id: str | None, until: int
    ) -> tuple[list[Event], int]:
        """Up to about ``limit`` events of ``library_id`` (``None``: every library) with
        positions in ``(after, until]``, in order, and the position up to which the log was
        read (every event of that library up to it is in the list). Raises
        ``HistoryLostError`` when events after ``after`` are no longer kept."""
        ...


class Repository(Protocol):
    """The reads of a store's tables: the durable state, as of ``ChangeLog.head``.

    Reads may run concurrently with each other and with writes, and see each write entirely
    or not at all.
    """

    def list_libraries(self) -> list[Library]:
        """Every library, in creation order."""
        ...

    def get_document(self, library_id: str, document_id: str) -> Document | None:
        """A document with its chunks and their embeddings."""
        ...

    def list_documents(
        self, library_id: str, limit: int, cursor: str | None, where: Predicate | None = None
    ) -> Page:
        """Documents in insertion order, without chunks; with ``where``, only those whose
        (document) metadata it matches. ``cursor`` comes from a previous page's
        ``next_cursor``; a cursor this store did not issue raises ``InvalidArgumentError``."""
        ...

    def count_documents(self, library_id: str, where: Predicate) -> int:
        """How many documents of a library have (document) metadata that ``where`` matches."""
        ...

    def iter_documents(self, library_id: str) -> Iterator[Document]:
        """Every document of a library with its chunks and embeddings (used to build indexes
        on open)."""
        ...

    def check(self) -> None:
        """Raise ``StorageError`` if the store cannot serve (readiness probe)."""
        ...


class Store(ChangeLog, Repository, Protocol):
    """A store: its change log and the tables the log leaves. ``start`` opens it (recovers
    from its files; raises ``StorageError``), ``stop`` makes what it holds durable and lets go
    of its files; both are called once, by whoever made it (the container)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Measurement:
    """One number an adapter reports about itself (for ``/metrics``): a ``gauge``, a
    ``counter`` or a ``histogram`` (``buckets``: cumulative counts per upper bound, and
    ``value``: the sum of what was observed)."""

    name: str
    help: str
    kind: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    buckets: tuple[tuple[float, int], ...] = ()


@runtime_checkable
class Measured(Protocol):
    """An adapter that reports measurements of itself."""

    def measurements(self) -> list[Measurement]: ...


class KeyStore(Protocol):
    """Where API keys are kept (as digests), beside the store: they survive restarts, and
    servers sharing a store (``shared``) share them. Raises ``StorageError``."""

    @property
    def shared(self) -> bool:
        """Whether other processes may change the keys."""
        ...

    def load_keys(self) -> list[ApiKey]:
        """Every key that is not revoked."""
        ...

    def save_key(self, key: ApiKey) -> None:
        """Keep a new key (durably, before it returns)."""
        ...

    def revoke_key(self, key_id: str) -> bool:
        """Forget a key; False if there is no such key."""
        ...


@dataclass(frozen=True, slots=True)
class StoredWatch:
    """A REST watch as a ``WatchStore`` keeps it."""

    watch: Watch
    #: the change event id its library was known at when it was registered (the library's
    #: creation is at or before it): a server that has applied this position and lacks the
    #: library knows the library was deleted
    position: int
    #: when a listener was last seen on it, on any server (Unix time, seconds; its
    #: registration at first): it expires ``watch_ttl`` seconds after that
    seen_at: float


class WatchStore(Protocol):
    """Where REST watches are kept, beside the store: they survive restarts, and servers
    sharing a store (``shared``) share them. Raises ``StorageError``."""

    @property
    def shared(self) -> bool:
        """Whether other processes may change the watches (then ``seen`` is polled)."""
        ...

    def save_watch(self, stored: StoredWatch) -> None:
        """Keep a watch (durably, before it returns), replacing one of the same id."""
        ...

    def delete_watch(self, watch_id: str, idle_before: float | None = None) -> bool:
        """Forget a watch; False if there is no such watch. With ``idle_before``, only if its
        ``seen_at`` is not later than that (an expiry that a listener seen meanwhile, on any
        server, prevents)."""
        ...

    def load_watches(self, ids: Collection[str] | None = None) -> list[StoredWatch]:
        """Every watch kept (``ids``: only those of these ids that are kept), oldest first."""
        ...

    def seen(self) -> dict[str, float]:
        """Every watch kept: its id and ``seen_at`` (a cheap read: no vectors)."""
        ...

    def touch(self, seen: Mapping[str, float]) -> None:
        """Record that listeners were seen on watches (id -> when); a time earlier than the
        one kept, or the id of a watch that is not kept, is ignored."""
        ...


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
    the hub's shared history, then (``EventHistory``) the store's log: a subscriber costs no
    memory per event, and one that keeps reading is never cut off, whatever other subscribers
    do or however large a commit. It is closed with ``SlowConsumerError`` (carrying the last
    id it delivered) only when events it still has to read are no longer kept, or when more
    than its own ``buffer`` of them wait unread.
    """

    @property
    def reset(self) -> Event | None:
        """The ``stream.reset`` event (``events.stream_reset``) to hand the consumer first when
        the requested start point was no longer retained: the stream then goes on after its
        id (live), and the consumer must resynchronise. ``None`` otherwise."""
        ...

    @property
    def last_id(self) -> str | None:
        """The id of the last event delivered (the value to resume from)."""
        ...

    @property
    def resume_from(self) -> str:
        """The id to resume from (``since``) to get exactly the events not delivered yet."""
        ...

    @property
    def behind(self) -> bool:
        """True when the next events must be read from the store's log: ``poll`` returns
        ``None`` until ``get`` or ``aget`` have fetched them."""
        ...

    def get(self, timeout: float | None = None) -> Event | None:
        """Block for the next event; ``None`` after ``timeout`` seconds without one.
        Raises ``SlowConsumerError`` or ``SubscriptionClosedError`` once closed."""
        ...

    async def aget(self, timeout: float | None = None) -> Event | None:
        """``get`` for a coroutine on an asyncio event loop; never blocks the loop (reads of
        the log run in a worker thread)."""
        ...

    def poll(self) -> Event | None:
        """The next event if one is in memory, without waiting or reading the log."""
        ...

    def close(self) -> None:
        """Unsubscribe. Idempotent."""
        ...


class EventHub(Protocol):
    """Hands committed change events to subscribers in this process, with a bounded history
    in memory (and the store's log behind it) for resuming.

    Only the projector publishes, in position order, once the changes are applied in memory,
    so a subscriber that sees an event can read its effects.
    """

    def start(self, last_id: int, history: EventHistory | None) -> None:
        """Begin after event ``last_id`` (the store's head), reading what the in-memory
        history no longer holds from ``history`` (``None``: nothing beyond it)."""
        ...

    def stop(self) -> None:
        """Close every subscription (``SubscriptionClosedError`` after their backlog)."""
        ...

    def publish(self, events: Sequence[Event]) -> None:
        """Append ``events`` (their ids follow the last one, consecutively) and wake
        subscribers. Never blocks on a subscriber."""
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
        ``buffer`` (``None``: no limit) bounds how many of its own events may wait unread."""
        ...

    @property
    def last_id(self) -> int:
        """The id of the last event published (or the one ``start`` began after)."""
        ...

    async def wait_beyond(self, after: int, timeout: float | None = None) -> int:
        """On an event loop: return ``last_id`` once it passes ``after`` (or after
        ``timeout`` seconds): a doorbell for code that fans events out itself. Raises
        ``SubscriptionClosedError`` once the hub is stopped."""
        ...
