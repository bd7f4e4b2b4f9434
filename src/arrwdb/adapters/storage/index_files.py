"""Saved indexes on disk: the ``IndexStore`` of a durable data directory.

Opening a store would otherwise rebuild every HNSW graph from the stored vectors, which costs
as much as the first ingest (~20 s per 100k 384-d chunks on 2 cores). Reading a saved graph
back takes under a second. Exact (``flat``) indexes are not
saved: building one is a copy of the vectors, as fast as reading it.

Layout, under ``<data dir>/indexes/``::

    <library id>/<generation>/graph.hnsw    hnswlib's own file (deleted marks included)
                              labels.npy    the live labels of the exact copy, int64
                              vectors.npy   their vectors as stored (normalised for cosine)
                              chunks.msgpack  the chunk id of every label ever given (or nil)
                              meta.json     format, kind, dimension, metric, parameters, and
                                            each file's size and crc32

A save is written into ``<generation>.tmp/``, every file fsynced, then renamed to
``<generation>/`` (a higher number than any before) and the directory fsynced; only then are
older generations removed. So a crash leaves either the old save or the new one, never a mix,
and a leftover ``.tmp`` is ignored and removed. ``load`` reads the newest generation; anything
unexpected (a missing file, a size that differs from ``meta.json``, a graph that does not match)
is logged on ``arrwdb.storage`` and the index is rebuilt instead: a save is only a cache. Every
file's crc32 is checked before it is used, so a damaged or edited file (even one of the same
size) is never loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from arrwdb.adapters.index.hnsw import HnswIndex
from arrwdb.adapters.storage._segments import fsync_directory, storage_error
from arrwdb.domain.models import Library
from arrwdb.domain.ports import SavedIndex, VectorIndex

__all__ = ["FileIndexStore"]

logger = logging.getLogger("arrwdb.storage")

#: 2: with the files' crc32 (a save of format 1 is rebuilt once)
FORMAT: Final = 2
META_FILE: Final = "meta.json"
CHUNKS_FILE: Final = "chunks.msgpack"
_TMP: Final = ".tmp"
_CHUNK_IDS = msgspec.msgpack.Decoder(list[str | None])


class FileIndexStore:
    """Implements ``arrwdb.domain.ports.IndexStore`` in the directory ``root``."""

    def __init__(self, root: str | os.PathLike[str], *, add_threads: int = -1) -> None:
        self.root = Path(root)
        self._add_threads = add_threads

    # -- reading ------------------------------------------------------------------------------

    def load(self, library: Library) -> SavedIndex | None:
        if library.index != "hnsw" or library.dimension is None:
            return None
        generations = self._generations(library.id)
        if not generations:
            return None
        directory = generations[-1][1]
        try:
            return self._read(library, directory)
        except (OSError, ValueError, RuntimeError, KeyError, msgspec.DecodeError) as exc:
            logger.warning(
                "saved index %s of library %s is not usable (%s): rebuilding it",
                directory,
                library.id,
                exc,
            )
            return None

    def _read(self, library: Library, directory: Path) -> SavedIndex | None:
        meta = json.loads((directory / META_FILE).read_text())
        expected = _identity(library)
        if {key: meta.get(key) for key in expected} != expected:
            logger.info("saved index %s is for other settings: rebuilding it", directory)
            return None
        for name, size in meta["sizes"].items():
            actual = (directory / name).stat().st_size
            if actual != size:
                raise ValueError(f"{name} has {actual} bytes, not {size}")
            if _crc32(directory / name) != meta["crc32"][name]:
                raise ValueError(f"{name} does not match its checksum")
        chunk_ids = _CHUNK_IDS.decode((directory / CHUNKS_FILE).read_bytes())
        assert library.dimension is not None
        index = HnswIndex.load(
            directory,
            library.dimension,
            library.metric,
            library.index_params,
            add_threads=self._add_threads,
        )
        live = sum(1 for chunk_id in chunk_ids if chunk_id is not None)
        if live != len(index):
            raise ValueError(f"{live} chunk ids for {len(index)} live vectors")
        return SavedIndex(index, chunk_ids)

    def _generations(self, library_id: str) -> list[tuple[int, Path]]:
        """The complete saves of a library, oldest first."""
        try:
            entries = list((self.root / library_id).iterdir())
        except OSError:
            return []
        found = [(int(e.name), e) for e in entries if e.name.isdigit() and e.is_dir()]
        return sorted(found)

    # -- writing ------------------------------------------------------------------------------

    def save(self, library: Library, index: VectorIndex, chunk_ids: Sequence[str | None]) -> None:
        if not isinstance(index, HnswIndex):
            return
        home = self.root / library.id
        generations = self._generations(library.id)
        number = generations[-1][0] + 1 if generations else 1
        final = home / str(number)
        staging = home / f"{number}{_TMP}"
        try:
            home.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            files = index.save(staging)
            chunks = staging / CHUNKS_FILE
            chunks.write_bytes(msgspec.msgpack.encode(list(chunk_ids)))
            files.append(chunks)
            meta = {
                **_identity(library),
                "count": len(index),
                "labels": len(chunk_ids),
                "sizes": {f.name: f.stat().st_size for f in files},
                "crc32": {f.name: _crc32(f) for f in files},
            }
            (staging / META_FILE).write_text(json.dumps(meta, indent=1))
            files.append(staging / META_FILE)
            for path in files:
                _fsync_file(path)
            fsync_directory(staging)
            staging.rename(final)
            fsync_directory(home)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise storage_error("could not save the index into", staging, exc) from exc
        except RuntimeError as exc:  # hnswlib reports a failed write so
            shutil.rmtree(staging, ignore_errors=True)
            reason = OSError(str(exc))
            raise storage_error("could not save the index into", staging, reason) from exc
        for _, older in generations:
            shutil.rmtree(older, ignore_errors=True)
        self._remove_temporaries(home)

    def discard(self, library_id: str) -> None:
        shutil.rmtree(self.root / library_id, ignore_errors=True)

    def retain(self, library_ids: Sequence[str]) -> None:
        keep = set(library_ids)
        with contextlib.suppress(OSError):
            for entry in self.root.iterdir():
                if entry.is_dir() and entry.name not in keep:
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.is_dir():
                    self._remove_temporaries(entry)

    @staticmethod
    def _remove_temporaries(home: Path) -> None:
        with contextlib.suppress(OSError):
            for entry in home.iterdir():
                if entry.name.endswith(_TMP):
                    shutil.rmtree(entry, ignore_errors=True)


def _identity(library: Library) -> dict[str, Any]:
    """What a saved index must share with the library to be used for it."""
    return {
        "format": FORMAT,
        "library": library.id,
        "kind": library.index,
        "dimension": library.dimension,
        "metric": library.metric,
        "params": library.index_params.as_dict(),
    }


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
