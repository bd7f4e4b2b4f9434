"""API keys kept in memory: for a server whose data is in memory too (gone at exit)."""

from __future__ import annotations

import threading

from arrwdb.domain.models import ApiKey


class MemoryKeys:
    """A ``KeyStore`` in a dict."""

    shared = False

    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}
        self._lock = threading.Lock()

    def load_keys(self) -> list[ApiKey]:
        with self._lock:
            return list(self._keys.values())

    def save_key(self, key: ApiKey) -> None:
        with self._lock:
            self._keys[key.id] = key

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            return self._keys.pop(key_id, None) is not None
