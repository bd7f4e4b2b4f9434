"""``Newest``: a small cache that keeps its newest entries, for values worth keeping between
searches (compiled filters, a filter's allowed labels and their search forms)."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Newest(Generic[K, V]):
    """At most ``size`` entries; an insertion drops the oldest ones first. Reads take no lock;
    insertions take one (searches running in parallel insert)."""

    __slots__ = ("_items", "_lock", "_size")

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: dict[K, V] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            items = self._items
            while len(items) >= self._size:
                items.pop(next(iter(items)))
            items[key] = value

    def clear(self) -> None:
        """(Not while another thread inserts: its caller holds the writers' side of a lock.)"""
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
