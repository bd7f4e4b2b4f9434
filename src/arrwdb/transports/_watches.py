"""What the watch routes (``rest_watches``) and the WebSocket ``watch`` action (``_ws_watches``)
share: the service calls of the watch actions (``dispatch.ACTIONS``), their wire shapes, and
the limit of watches per key (``max_watches_per_key``).

A watch is checked as a search is (``Watching.prepare``: ``k``, ``threshold``, the query, its
dimension, the filter) before anything is registered, so a refused watch leaves nothing behind.
REST watches are registered ``stored`` (they outlive their listeners); WebSocket watches live
with their connection.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from arrwdb.domain.errors import InvalidArgumentError, LimitExceededError, WatchNotFoundError
from arrwdb.domain.service import VectorDBService
from arrwdb.domain.watches import Watch, WatchFeed, WatchListener, WatchSource
from arrwdb.transports.messages import WatchId, WatchIn, WatchList, WatchOut


def watch_out(watch: Watch) -> WatchOut:
    info = watch.info()
    return WatchOut(
        id=info["id"],
        library_id=info["library_id"],
        k=info["k"],
        threshold=info["threshold"],
        filter=info["filter"],
        created_at=info["created_at"],
    )


def _library(library_id: str | None) -> str:
    assert library_id is not None, "a watch action needs a library id"
    return library_id


def register(
    service: VectorDBService, library_id: str | None, r: WatchIn, *, stored: bool
) -> WatchSource:
    """Check and start a watch. Raises what ``Watching.prepare`` and ``register`` raise
    (``NotFoundError``, ``ValidationError``, ``LimitExceededError``)."""
    watching = service.watching
    prepared = watching.prepare(
        _library(library_id),
        k=r.k,
        threshold=r.threshold,
        filter=r.filter,
        query_text=r.query_text,
        query_vector=r.query_vector,
    )
    return watching.register(prepared, stored=stored)


def create(service: VectorDBService, library_id: str | None, r: WatchIn) -> Watch:
    """``POST .../watches``: a stored watch."""
    return register(service, library_id, r, stored=True).watch


def listed(service: VectorDBService, library_id: str | None, _: object) -> WatchList:
    return WatchList(watches=[watch_out(w) for w in service.watching.list(_library(library_id))])


def found(service: VectorDBService, library_id: str | None, r: WatchId) -> Watch:
    service.get_library(_library(library_id))  # an unknown library is named as such
    return service.watching.get(r.watch_id, library_id).watch


def stop(service: VectorDBService, library_id: str | None, r: WatchId) -> None:
    service.get_library(_library(library_id))
    service.watching.stop(r.watch_id, library_id)


@dataclass(frozen=True, slots=True)
class Followed:
    """A WebSocket ``watch``: the watch, the socket's listener, the feed it reads (what wakes
    the socket), and whether the socket owns the watch (made it: removed with the socket) or
    follows a REST watch (``unwatch`` only detaches)."""

    watch: Watch
    listener: WatchListener
    feed: WatchFeed
    owned: bool


def follow(
    service: VectorDBService,
    library_id: str | None,
    r: WatchIn,
    watch_id: str | None,
    since: str | None,
) -> Followed:
    """A new watch of the socket (``r``), or a listener of the watch ``watch_id`` from
    ``since`` (a watch event id: the events after it)."""
    lib = _library(library_id)
    watching = service.watching
    if watch_id is not None:
        if r.query_text is not None or r.query_vector is not None:
            raise InvalidArgumentError(
                "give watch_id (to follow a watch) or a query (to make one), not both",
                field="watch_id",
            )
        service.get_library(lib)
        live = watching.get(watch_id, lib)
        listener = watching.listen(watch_id, since, lib)
        return Followed(live.watch, listener, live.feed, owned=False)
    if since is not None:
        raise InvalidArgumentError(
            "since resumes the watch named by watch_id: give watch_id too", field="since"
        )
    made = register(service, lib, r, stored=False)
    try:
        listener = watching.listen(made.watch.id, None, lib)
    except BaseException:
        with contextlib.suppress(WatchNotFoundError):
            watching.stop(made.watch.id, lib)
        raise
    return Followed(made.watch, listener, made.feed, owned=True)


def is_live(service: VectorDBService, watch_id: str) -> bool:
    try:
        service.watching.get(watch_id)
    except WatchNotFoundError:
        return False
    return True


class WatchOwners:
    """The watches each key (on a server without keys: each client address) has made, for
    the ``max_watches_per_key`` limit (``0``: none). Used from the event loop only: a
    reservation is taken before a watch is registered and kept until it is, so concurrent
    requests of one key cannot pass the limit together. Watches that ended (deleted, expired,
    their socket or library gone) are forgotten when the count reaches the limit."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._made: dict[str, set[str]] = {}
        self._pending: Counter[str] = Counter()

    def count(self, owner: str) -> int:
        return len(self._made.get(owner, ())) + self._pending[owner]

    @contextlib.contextmanager
    def making(self, owner: str, alive: Callable[[str], bool]) -> Iterator[Callable[[str], None]]:
        """Reserve one watch for ``owner`` (``LimitExceededError`` beyond the limit); the
        block calls what it is given with the id of the watch it made."""
        limit = self._limit
        if limit and self.count(owner) >= limit:
            made = self._made.get(owner, set())
            made.intersection_update({w for w in made if alive(w)})
            if self.count(owner) >= limit:
                raise LimitExceededError(
                    f"this key has {limit} watches, the limit (max_watches_per_key): delete "
                    "some first",
                    limit="max_watches_per_key",
                )
        self._pending[owner] += 1
        try:
            yield lambda watch_id: self._made.setdefault(owner, set()).add(watch_id)
        finally:
            self._pending[owner] -= 1
            if not self._pending[owner]:
                del self._pending[owner]

    def forget(self, owner: str, watch_id: str) -> None:
        made = self._made.get(owner)
        if made is not None:
            made.discard(watch_id)
            if not made:
                del self._made[owner]
