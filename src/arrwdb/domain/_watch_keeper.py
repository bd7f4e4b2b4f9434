"""Stored watches: the REST watches, kept in a ``WatchStore`` so that they outlive a restart and
are served by every server sharing the store, and ended once idle for the watch TTL.

A stored watch is saved, then started here (``register``); it is deleted from the store when it
is stopped, when its library is deleted, or when it expires. At load (``restore``) every stored
watch of a library that exists is started again, and one of a library that no longer exists is
deleted.

A background thread (``begin``/``end``, every ``interval`` seconds, at most a quarter of the TTL)
does the rest:

* **sharing**: when the store is ``shared`` (PostgreSQL), it reads the ids kept (``seen``: no
  vectors), starts the watches registered by other servers and stops those they deleted, so a
  watch appears or disappears on every server within about ``interval``. A lookup of a watch
  unknown here (``fetch``) reads the store at once, so a watch made on one server can be listened
  to on another right away;
* **liveness**: a watch with listeners here has its ``seen_at`` raised in the store (``touch``)
  every ``TOUCH_EVERY`` seconds at most (and at most a quarter of the TTL), and when its last
  listener here leaves, to that moment; so a watch listened to on any server is seen as such by
  all of them. (Times are wall clock: servers sharing a store need clocks in step to well
  within the TTL.)
* **expiry**: a watch with no listener here whose ``seen_at`` (or its last listener here) is
  ``ttl`` seconds old is deleted from the store, only if its ``seen_at`` is still that old there
  (``delete_watch(idle_before=...)``: a listener seen meanwhile on another server keeps it), and
  stopped with ``watch_expired``.

Its library's state lives in the projection; the watch itself in the projector's ``WatchBook``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from arrwdb.domain._watch_engine import LiveWatch
from arrwdb.domain.errors import ArrwdbError
from arrwdb.domain.ports import StoredWatch, WatchStore
from arrwdb.domain.projection import Projection, Projector
from arrwdb.domain.watches import CLOSED_DELETED, CLOSED_EXPIRED, Watch

logger = logging.getLogger("arrwdb.watches")

#: Seconds an idle stored watch lives without a listener (``watch_ttl``).
DEFAULT_WATCH_TTL = 3600.0
#: Seconds between the keeper's rounds (sharing, liveness, expiry).
SYNC_INTERVAL = 1.0
#: The longest a listened-to watch's ``seen_at`` lags behind in the store, in seconds.
TOUCH_EVERY = 60.0


class WatchKeeper:
    """The stored watches of one service. Thread-safe: registration, removal and the rounds
    run under one lock, so a watch is started once and a deleted one is never started again."""

    def __init__(
        self,
        store: WatchStore | None,
        projection: Projection,
        projector: Projector,
        start: Callable[[Watch], LiveWatch],
        ttl: float = DEFAULT_WATCH_TTL,
        interval: float = SYNC_INTERVAL,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the watch TTL must be > 0 seconds")
        self._store = store
        self._shared = store is not None and store.shared
        self._projection = projection
        self._projector = projector
        self._start = start
        self.ttl = ttl
        self.interval = min(interval, ttl / 4)
        self._touch_every = min(TOUCH_EVERY, ttl / 4)
        self._lock = threading.RLock()
        #: the stored watches known here (started, or waiting for their library to arrive)
        self._records: dict[str, StoredWatch] = {}
        #: a started watch's ``feed.idle_since`` that its ``seen_at`` already accounts for
        self._baseline: dict[str, float] = {}
        #: stored watches that could not start (said once in the log; tried every round)
        self._refused: set[str] = set()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def is_stored(self, watch_id: str) -> bool:
        return watch_id in self._records

    # -- use cases ----------------------------------------------------------------------------

    def register(self, watch: Watch) -> LiveWatch:
        """Save ``watch`` (durably), then start it. Raises ``StorageError`` (nothing started)
        and what ``start`` raises (nothing kept)."""
        with self._lock:
            live = self._projector.watches.get(watch.id)
            if live is not None:
                return live
            record = StoredWatch(watch, self._projection.applied, time.time())
            if self._store is not None:
                self._store.save_watch(record)
            try:
                live = self._start(watch)
            except BaseException:
                if self._store is not None:
                    with contextlib.suppress(ArrwdbError):
                        self._store.delete_watch(watch.id)
                raise
            self._records[watch.id] = record
            self._baseline[watch.id] = live.feed.idle_since
            return live

    def stop(self, watch_id: str, reason: str) -> None:
        """Stop a watch here; a stored one is deleted from the store first (for every server).
        Raises ``StorageError`` (then nothing is stopped)."""
        with self._lock:
            if watch_id in self._records:
                if self._store is not None:
                    self._store.delete_watch(watch_id)
                self._forget_locked(watch_id)
            self._projector.unwatch(watch_id, reason)

    def library_deleted(self, library_id: str) -> None:
        """Delete the stored watches of a deleted library (the projector has stopped them)."""
        with self._lock:
            for watch_id, record in list(self._records.items()):
                if record.watch.library_id == library_id:
                    self._delete_locked(watch_id)

    def fetch(self, watch_id: str) -> LiveWatch | None:
        """A watch unknown here, from a shared store (registered on another server since the
        last round), started; ``None`` if there is none, or its library is not here (yet)."""
        if not self._shared or self._store is None:
            return None
        with self._lock:
            record = self._records.get(watch_id)
            if record is None:
                found = self._store.load_watches([watch_id])
                if not found:
                    return None
                record = self._records[watch_id] = found[0]
            return self._place_locked(record)

    def listened(self, watch_id: str) -> None:
        """A listener was opened on a stored watch: a shared store is told at once, so that no
        other server expires it meanwhile."""
        if not self._shared or self._store is None:
            return
        with self._lock:
            record = self._records.get(watch_id)
            if record is None:
                return
            now = time.time()
            try:
                self._store.touch({watch_id: now})
            except ArrwdbError as exc:  # the next round tries again
                logger.warning("could not record a listener of watch %s: %s", watch_id, exc)
                return
            self._records[watch_id] = replace(record, seen_at=now)

    # -- lifecycle ----------------------------------------------------------------------------

    def restore(self) -> None:
        """Start every stored watch again (after the projection is loaded); delete those whose
        library is gone. Raises ``StorageError``."""
        if self._store is None:
            return
        records = self._store.load_watches()
        with self._lock:
            for record in records:
                self._records[record.watch.id] = record
                self._place_locked(record)
        if records:
            logger.info("%d stored watch(es) restored", len(self._records))

    def begin(self) -> None:
        """Start the rounds in a background thread (until ``end``)."""
        if self._thread is not None:
            return
        self._stopped.clear()
        self._thread = threading.Thread(target=self._run, name="arrwdb-watch-keeper", daemon=True)
        self._thread.start()

    def end(self) -> None:
        """Stop the rounds (waits for the one under way). The watches stay stored."""
        self._stopped.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.round()
            except Exception as exc:
                if not self._failing:
                    logger.warning("keeping the stored watches failed (retrying): %s", exc)
                self._failing = True
            else:
                self._failing = False

    def round(self) -> None:
        """One round: follow a shared store, record liveness, expire idle watches."""
        with self._lock:
            if self._shared:
                self._sync_locked()
            now, mono = time.time(), time.monotonic()
            touches: dict[str, float] = {}
            idle: list[str] = []
            for watch_id, record in list(self._records.items()):
                live = self._place_locked(record)
                if live is None:
                    continue
                feed = live.feed
                listeners, idle_since = feed.listeners, feed.idle_since
                seen = record.seen_at
                if listeners > 0:
                    if now - seen >= self._touch_every:
                        touches[watch_id] = now
                    continue
                if idle_since != self._baseline.get(watch_id):  # its last listener left
                    left = now - (mono - idle_since)
                    self._baseline[watch_id] = idle_since
                    if left > seen:
                        touches[watch_id] = seen = left
                if seen + self.ttl <= now:
                    idle.append(watch_id)
            if touches and self._store is not None:
                self._store.touch(touches)
            for watch_id, at in touches.items():
                self._records[watch_id] = replace(self._records[watch_id], seen_at=at)
            for watch_id in idle:
                self._expire_locked(watch_id, now - self.ttl)

    # -- under the lock -----------------------------------------------------------------------

    def _sync_locked(self) -> None:
        """Follow a shared store: start what other servers registered, stop what they
        deleted, take the liveness they recorded."""
        assert self._store is not None
        kept = self._store.seen()
        for watch_id in [w for w in self._records if w not in kept]:
            self._forget_locked(watch_id)
            self._projector.unwatch(watch_id, CLOSED_DELETED)
        new = [w for w in kept if w not in self._records]
        if new:
            for record in self._store.load_watches(new):
                self._records[record.watch.id] = record
        for watch_id, at in kept.items():
            known = self._records.get(watch_id)
            if known is not None and at > known.seen_at:
                self._records[watch_id] = replace(known, seen_at=at)

    def _place_locked(self, record: StoredWatch) -> LiveWatch | None:
        """The live watch of a stored one, started if it is not (its library here); deleted
        from the store when its library is gone."""
        watch = record.watch
        live = self._projector.watches.get(watch.id)
        if live is not None:
            return live
        # the position first: every library created by then is in the states (a position is
        # applied after its batch), so one missing then was deleted, not created meanwhile
        applied = self._projection.applied
        if watch.library_id in self._projection.states:
            try:
                live = self._start(watch)
            except ArrwdbError as exc:  # e.g. the library's watch limit: kept, tried again
                if watch.id not in self._refused:
                    logger.warning("stored watch %s cannot start (yet): %s", watch.id, exc)
                    self._refused.add(watch.id)
                return None
            self._refused.discard(watch.id)
            self._baseline[watch.id] = live.feed.idle_since
            return live
        # a server that has applied the position it was registered at has seen its library's
        # creation; without the library there, it was deleted (a store of one server is never
        # behind its own watches)
        if not self._shared or applied >= record.position:
            self._delete_locked(watch.id)
        return None

    def _delete_locked(self, watch_id: str) -> None:
        if self._store is not None:
            self._store.delete_watch(watch_id)
        self._forget_locked(watch_id)
        logger.info("stored watch %s deleted with its library", watch_id)

    def _expire_locked(self, watch_id: str, cutoff: float) -> None:
        if self._store is not None and not self._store.delete_watch(watch_id, idle_before=cutoff):
            return  # listened to elsewhere meanwhile, or deleted: the next round sees which
        self._forget_locked(watch_id)
        self._projector.unwatch(watch_id, CLOSED_EXPIRED)
        logger.info("watch %s expired (no listener for %ss)", watch_id, self.ttl)

    def _forget_locked(self, watch_id: str) -> None:
        self._records.pop(watch_id, None)
        self._baseline.pop(watch_id, None)
        self._refused.discard(watch_id)
