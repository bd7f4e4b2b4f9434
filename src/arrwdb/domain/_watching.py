"""The watch use cases: register a watch (checked like a search), find, list, listen, remove.

The service owns one ``Watching``; the projector keeps the watches' results (``_watch_engine``).
A watch is registered under the projector's order, so its ``watch.ready`` is consistent at one
change event id and it then sees every later change exactly once. REST watches are *stored*
(``register(stored=True)``): kept in the ``WatchStore``, shared, and expired when idle by the
``WatchKeeper`` (``_watch_keeper``); the others live with their owner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from arrwdb.domain import validation as v
from arrwdb.domain._documents import DocumentBuilder
from arrwdb.domain._watch_engine import LiveWatch
from arrwdb.domain._watch_keeper import DEFAULT_WATCH_TTL, WatchKeeper
from arrwdb.domain.errors import InvalidArgumentError, LimitExceededError, WatchNotFoundError
from arrwdb.domain.filters import MATCH_ALL, compile_filter
from arrwdb.domain.limits import Limits
from arrwdb.domain.models import Vector, new_id, utcnow
from arrwdb.domain.ports import WatchStore
from arrwdb.domain.projection import Projection, Projector
from arrwdb.domain.watches import (
    CLOSED_DELETED,
    CLOSED_SHUTDOWN,
    DEFAULT_WATCH_HISTORY,
    Watch,
    WatchListener,
    check_watch,
)

Query = str | Sequence[float] | Vector


class Watching:
    def __init__(
        self,
        projection: Projection,
        projector: Projector,
        builder: DocumentBuilder,
        limits: Limits,
        history: int = DEFAULT_WATCH_HISTORY,
        store: WatchStore | None = None,
        ttl: float = DEFAULT_WATCH_TTL,
    ) -> None:
        self._projection = projection
        self._projector = projector
        self._builder = builder
        self._limits = limits
        self._history = history
        #: the stored (REST) watches: without a ``store``, kept in memory only
        self.keeper = WatchKeeper(store, projection, projector, self.start, ttl)

    # -- lifecycle (the service's) ------------------------------------------------------------

    def restore(self) -> None:
        """Start the stored watches again (once the projection is loaded). Raises
        ``StorageError``."""
        self.keeper.restore()

    def keep(self) -> None:
        """Follow, keep alive and expire the stored watches in a background thread."""
        self.keeper.begin()

    def close(self) -> None:
        """Stop that thread and end every watch here (``shutdown``); stored ones stay stored."""
        self.keeper.end()
        self._projector.watches.close_all(CLOSED_SHUTDOWN)

    def library_deleted(self, library_id: str) -> None:
        """Delete the stored watches of a library just deleted."""
        self.keeper.library_deleted(library_id)

    # -- use cases ----------------------------------------------------------------------------

    def prepare(
        self,
        library_id: str,
        query: Query | None = None,
        *,
        k: int | None = None,
        threshold: float | None = None,
        filter: Mapping[str, Any] | None = None,
        query_text: str | None = None,
        query_vector: Sequence[float] | Vector | None = None,
        watch_id: str | None = None,
        created_at: datetime | None = None,
    ) -> Watch:
        """A watch's registration, checked as a search is (the query as one of ``query``, a
        text or a vector, ``query_text`` or ``query_vector``). Raises ``NotFoundError``,
        ``ValidationError``."""
        library = self._projection.state(library_id).library
        checked_k, checked_threshold = check_watch(k, threshold)
        if filter is not None:
            compile_filter(filter)
        if query is not None:
            if query_text is not None or query_vector is not None:
                raise InvalidArgumentError(
                    "give the query once: query, query_text or query_vector", field="query_text"
                )
            if isinstance(query, str):
                query_text = query
            else:
                query_vector = query
        if (query_text is None) == (query_vector is None):
            raise InvalidArgumentError(
                "give exactly one of query_text and query_vector", field="query_text"
            )
        if query_text is not None:
            vectors = self._builder.text_query_vectors(library, [query_text])
            if vectors is None:
                raise InvalidArgumentError(
                    "the library has no dimension yet: a text query cannot be embedded; add a "
                    "document first or watch a vector",
                    field="query_text",
                )
            vector = np.ascontiguousarray(vectors[0], dtype=np.float32)
        else:
            assert query_vector is not None
            vector = v.as_vector(query_vector, library.dimension, library.metric, "query_vector")
        return Watch(
            id=watch_id or new_id(),
            library_id=library_id,
            k=checked_k,
            threshold=checked_threshold,
            filter=None if filter is None else dict(filter),
            created_at=created_at or utcnow(),
            vector=vector,
            query_text=query_text,
        )

    def start(self, watch: Watch) -> LiveWatch:
        """Start keeping ``watch``'s results (a ``prepare``d or a stored registration): an
        exact search now, then every change. Raises ``NotFoundError``, ``LimitExceededError``
        (``max_watches_per_library``)."""
        existing = self._projector.watches.get(watch.id)
        if existing is not None:
            return existing
        limit = self._limits.watches_per_library
        if self._projector.watches.count(watch.library_id) >= limit:
            raise LimitExceededError(
                f"library {watch.library_id!r} has {limit} watches, the limit "
                "(max_watches_per_library)",
                limit="max_watches_per_library",
            )
        predicate = None
        if watch.filter is not None:
            compiled = compile_filter(watch.filter)
            predicate = None if compiled is MATCH_ALL else compiled
        return self._projector.watch(watch, predicate, self._history)

    def register(self, watch: Watch, *, stored: bool = False) -> LiveWatch:
        """Start a ``prepare``d watch. ``stored``: a watch registered over REST, saved first
        (``StorageError``), which outlives its listeners and this process, is served by every
        server sharing the store, and lasts until deleted or idle for the watch TTL;
        otherwise it lives with its owner (an in-process handle, a WebSocket connection)."""
        return self.keeper.register(watch) if stored else self.start(watch)

    def get(self, watch_id: str, library_id: str | None = None) -> LiveWatch:
        """A live watch; raises ``WatchNotFoundError`` (also for a watch of another
        library)."""
        if not isinstance(watch_id, str):
            raise WatchNotFoundError(str(watch_id), library_id)
        live = self._projector.watches.get(watch_id)
        if live is None:  # maybe registered on another server since the keeper last looked
            live = self.keeper.fetch(watch_id)
        if live is None or (library_id is not None and live.watch.library_id != library_id):
            raise WatchNotFoundError(str(watch_id), library_id)
        return live

    def listen(
        self, watch_id: str, since: str | None = None, library_id: str | None = None
    ) -> WatchListener:
        """A reader of a watch's events: ``watch.ready`` first, or (``since``: a watch event
        id) the events after it, or a ``stream.reset`` and a fresh ``watch.ready`` when those
        are no longer held. Raises ``WatchNotFoundError``, ``InvalidArgumentError``."""
        listener = WatchListener(self.get(watch_id, library_id), since or None)
        self.keeper.listened(watch_id)
        return listener

    def list(self, library_id: str) -> list[Watch]:
        self._projection.state(library_id)
        return [live.watch for live in self._projector.watches.of_library(library_id)]

    def stop(
        self, watch_id: str, library_id: str | None = None, reason: str = CLOSED_DELETED
    ) -> None:
        """Remove a watch (a stored one from the store too, for every server); its listeners'
        streams end with ``reason``. Raises ``WatchNotFoundError``, ``StorageError``."""
        self.get(watch_id, library_id)
        self.keeper.stop(watch_id, reason)
