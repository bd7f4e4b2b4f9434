"""Watches kept in one JSON file in the data directory (``watches.json``), rewritten whole and
atomically (a new file, fsynced, renamed over the old one) at each change. A watch's query
vector is kept as its float32 little-endian bytes (base64 in the JSON): read back exactly."""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from arrwdb.adapters.storage._segments import replace_durably
from arrwdb.domain.errors import StorageError
from arrwdb.domain.ports import StoredWatch
from arrwdb.domain.watches import Watch

FILE_NAME = "watches.json"
FORMAT = 1


class _Watch(msgspec.Struct):
    id: str
    library_id: str
    k: int | None
    threshold: float | None
    filter: dict[str, Any] | None
    created_at: datetime
    vector: bytes
    query_text: str | None
    position: int
    seen_at: float


class _File(msgspec.Struct):
    format: int
    watches: list[_Watch]


class FileWatches:
    """A ``WatchStore`` in ``<directory>/watches.json``."""

    shared = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._path = Path(directory) / FILE_NAME
        self._lock = threading.Lock()

    def save_watch(self, stored: StoredWatch) -> None:
        with self._lock:
            kept = self._read()
            kept[stored.watch.id] = _encode(stored)
            self._write(kept)

    def delete_watch(self, watch_id: str, idle_before: float | None = None) -> bool:
        with self._lock:
            kept = self._read()
            record = kept.get(watch_id)
            if record is None or (idle_before is not None and record.seen_at > idle_before):
                return False
            del kept[watch_id]
            self._write(kept)
            return True

    def load_watches(self, ids: Collection[str] | None = None) -> list[StoredWatch]:
        with self._lock:
            kept = self._read()
        records = kept.values() if ids is None else [kept[i] for i in set(ids) if i in kept]
        found = [_decode(r) for r in records]
        return sorted(found, key=lambda w: (w.watch.created_at, w.watch.id))

    def seen(self) -> dict[str, float]:
        with self._lock:
            return {i: r.seen_at for i, r in self._read().items()}

    def touch(self, seen: Mapping[str, float]) -> None:
        with self._lock:
            kept = self._read()
            changed = False
            for watch_id, at in seen.items():
                record = kept.get(watch_id)
                if record is not None and at > record.seen_at:
                    record.seen_at = at
                    changed = True
            if changed:
                self._write(kept)

    def _read(self) -> dict[str, _Watch]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StorageError(f"cannot read the watches ({FILE_NAME}): {exc.strerror}") from None
        try:
            data = msgspec.json.decode(raw, type=_File)
        except msgspec.DecodeError as exc:
            raise StorageError(f"the watches file {FILE_NAME} is damaged: {exc}") from None
        if data.format > FORMAT:
            raise StorageError(
                f"{FILE_NAME} has format {data.format}, newer than this arrwDB ({FORMAT})"
            )
        return {r.id: r for r in data.watches}

    def _write(self, kept: dict[str, _Watch]) -> None:
        try:
            replace_durably(self._path, msgspec.json.encode(_File(FORMAT, list(kept.values()))))
        except OSError as exc:
            raise StorageError(f"cannot save the watches ({FILE_NAME}): {exc.strerror}") from None


def _encode(stored: StoredWatch) -> _Watch:
    w = stored.watch
    return _Watch(
        id=w.id,
        library_id=w.library_id,
        k=w.k,
        threshold=w.threshold,
        filter=None if w.filter is None else dict(w.filter),
        created_at=w.created_at,
        vector=np.ascontiguousarray(w.vector, dtype="<f4").tobytes(),
        query_text=w.query_text,
        position=stored.position,
        seen_at=stored.seen_at,
    )


def _decode(r: _Watch) -> StoredWatch:
    vector = np.frombuffer(r.vector, dtype="<f4").astype(np.float32)
    watch = Watch(
        r.id, r.library_id, r.k, r.threshold, r.filter, r.created_at, vector, r.query_text
    )
    return StoredWatch(watch, r.position, r.seen_at)
