"""Watches kept in memory: for a server whose data is in memory too (gone at exit)."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import replace

from arrwdb.domain.ports import StoredWatch


class MemoryWatches:
    """A ``WatchStore`` in a dict."""

    shared = False

    def __init__(self) -> None:
        self._watches: dict[str, StoredWatch] = {}
        self._lock = threading.Lock()

    def save_watch(self, stored: StoredWatch) -> None:
        with self._lock:
            self._watches.pop(stored.watch.id, None)
            self._watches[stored.watch.id] = stored

    def delete_watch(self, watch_id: str, idle_before: float | None = None) -> bool:
        with self._lock:
            stored = self._watches.get(watch_id)
            if stored is None or (idle_before is not None and stored.seen_at > idle_before):
                return False
            del self._watches[watch_id]
            return True

    def load_watches(self, ids: Collection[str] | None = None) -> list[StoredWatch]:
        with self._lock:
            found = (
                list(self._watches.values())
                if ids is None
                else [self._watches[i] for i in set(ids) if i in self._watches]
            )
        return sorted(found, key=lambda w: (w.watch.created_at, w.watch.id))

    def seen(self) -> dict[str, float]:
        with self._lock:
            return {i: w.seen_at for i, w in self._watches.items()}

    def touch(self, seen: Mapping[str, float]) -> None:
        with self._lock:
            for watch_id, at in seen.items():
                stored = self._watches.get(watch_id)
                if stored is not None and at > stored.seen_at:
                    self._watches[watch_id] = replace(stored, seen_at=at)
