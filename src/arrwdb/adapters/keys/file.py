"""API keys kept in one JSON file in the data directory (``keys.json``), rewritten whole and
atomically (a new file, fsynced, renamed over the old one) at each change: keys change rarely."""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path

import msgspec

from arrwdb.adapters.storage._segments import replace_durably
from arrwdb.domain.errors import StorageError
from arrwdb.domain.models import AccessLevel, ApiKey

FILE_NAME = "keys.json"


class _Key(msgspec.Struct):
    id: str
    name: str
    libraries: list[str]
    access: AccessLevel
    created_at: datetime
    digest: str


class _File(msgspec.Struct):
    format: int
    keys: list[_Key]


FORMAT = 1


class FileKeys:
    """A ``KeyStore`` in ``<directory>/keys.json`` (only digests of secrets are written)."""

    shared = False

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._path = Path(directory) / FILE_NAME
        self._lock = threading.Lock()

    def load_keys(self) -> list[ApiKey]:
        with self._lock:
            return self._read()

    def save_key(self, key: ApiKey) -> None:
        with self._lock:
            keys = [k for k in self._read() if k.id != key.id]
            self._write([*keys, key])

    def revoke_key(self, key_id: str) -> bool:
        with self._lock:
            keys = self._read()
            kept = [k for k in keys if k.id != key_id]
            if len(kept) == len(keys):
                return False
            self._write(kept)
            return True

    def _read(self) -> list[ApiKey]:
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot read the API keys ({FILE_NAME}): {exc.strerror}") from None
        try:
            data = msgspec.json.decode(raw, type=_File)
        except msgspec.DecodeError as exc:
            raise StorageError(f"the API keys file {FILE_NAME} is damaged: {exc}") from None
        if data.format > FORMAT:
            raise StorageError(
                f"{FILE_NAME} has format {data.format}, newer than this arrwDB ({FORMAT})"
            )
        return [
            ApiKey(k.id, k.name, tuple(k.libraries), k.access, k.created_at, k.digest)
            for k in data.keys
        ]

    def _write(self, keys: list[ApiKey]) -> None:
        body = _File(
            FORMAT,
            [_Key(k.id, k.name, list(k.libraries), k.access, k.created_at, k.digest) for k in keys],
        )
        try:
            replace_durably(self._path, msgspec.json.encode(body))
        except OSError as exc:
            raise StorageError(f"cannot save the API keys ({FILE_NAME}): {exc.strerror}") from None
