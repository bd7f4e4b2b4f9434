"""Snapshot files: the whole state of a store as of one log record, written atomically.

``snapshot-<last seq, 20 digits>.snap`` is a sequence of frames (``_codec``, magic ``AWS1``)
numbered 0, 1, 2, ...: a header (format, last record number, last position), the libraries in
creation order, each library's documents in listing order with their list positions (batches
of about ``BATCH_CHUNKS`` chunks), the latest events (the event history of a store opened from
the file alone, such as a backup), and an end frame that counts the frames before it. It is written
to ``<name>.tmp``, fsynced, renamed with ``os.replace`` and the directory fsynced, so a name
ending in ``.snap`` always denotes a complete file; a ``.tmp`` left by a crash is deleted on open.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import msgspec

from arrwdb.adapters.storage._codec import (
    ENCODER,
    SNAPSHOT_DECODER,
    SNAPSHOT_MAGIC,
    DocumentsItem,
    EventsItem,
    FrameError,
    LibraryItem,
    ReceiptsItem,
    SnapshotEnd,
    SnapshotHeader,
    SnapshotItem,
    encode_receipt,
    frame_header,
    iter_frames,
)
from arrwdb.adapters.storage._segments import fsync_directory, storage_error
from arrwdb.domain.changes import Receipt
from arrwdb.domain.errors import StorageError
from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library, utcnow

#: 2: positions (the header's, and every document's list position). 1 (development builds
#: before positions) is not read.
FORMAT: Final = 2
BATCH_CHUNKS: Final = 1024
BATCH_EVENTS: Final = 4096


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """What a snapshot holds: the state after record ``last_seq``, i.e. position
    ``position``."""

    last_seq: int
    libraries: list[Library]
    #: library id -> (list position, document) in listing order
    documents: dict[str, list[tuple[int, Document]]]
    position: int
    #: the latest events, oldest first, ending at ``position``
    events: list[Event]
    #: the remembered idempotency keys, oldest first
    receipts: list[tuple[str, Receipt]] = field(default_factory=list)


def snapshot_name(last_seq: int) -> str:
    return f"snapshot-{last_seq:020d}.snap"


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """``(last seq, path)`` of every complete snapshot in ``directory``, oldest first."""
    found = []
    for path in directory.glob("snapshot-*.snap"):
        digits = path.name[9:-5]
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def remove_temporaries(directory: Path) -> None:
    """Delete snapshots a crash left half-written."""
    for path in directory.glob("snapshot-*.snap.tmp"):
        path.unlink(missing_ok=True)


def write_snapshot(directory: Path, state: SnapshotState) -> Path:
    """Write ``state`` to ``directory`` atomically and durably; return the file's path."""
    final = directory / snapshot_name(state.last_seq)
    temporary = final.with_name(final.name + ".tmp")
    try:
        with temporary.open("wb") as file:
            count = 0
            for item in _items(state):
                _put(file, count, item)
                count += 1
            _put(file, count, SnapshotEnd(items=count))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, final)
        fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise storage_error("could not write snapshot", final, exc) from exc
    return final


def _items(state: SnapshotState) -> Iterator[SnapshotItem]:
    yield SnapshotHeader(
        format=FORMAT, last_seq=state.last_seq, created_at=utcnow(), position=state.position
    )
    for library in state.libraries:
        yield LibraryItem(library=library)
    for library_id, entries in state.documents.items():
        for batch in _batches(entries):
            yield DocumentsItem(
                library_id=library_id,
                documents=[doc for _, doc in batch],
                positions=[position for position, _ in batch],
            )
    for start in range(0, len(state.events), BATCH_EVENTS):
        yield EventsItem(events=state.events[start : start + BATCH_EVENTS])
    for start in range(0, len(state.receipts), BATCH_EVENTS):
        part = state.receipts[start : start + BATCH_EVENTS]
        yield ReceiptsItem(receipts=[encode_receipt(key, receipt) for key, receipt in part])


def _batches(entries: Sequence[tuple[int, Document]]) -> Iterator[list[tuple[int, Document]]]:
    batch: list[tuple[int, Document]] = []
    chunks = 0
    for entry in entries:
        batch.append(entry)
        chunks += max(1, len(entry[1].chunks))
        if chunks >= BATCH_CHUNKS:
            yield batch
            batch, chunks = [], 0
    if batch:
        yield batch


def _put(file: IO[bytes], number: int, item: SnapshotItem) -> None:
    payload = ENCODER.encode(item)
    file.write(frame_header(SNAPSHOT_MAGIC, number, len(payload), zlib.crc32(payload)))
    file.write(payload)


def read_snapshot(path: Path) -> Iterator[SnapshotItem]:
    """The items of a snapshot, header first, without the end frame.

    Raises ``StorageError`` naming the file and byte offset if the file is damaged or
    incomplete (which the caller only learns after the last item)."""
    offset = 0
    try:
        with path.open("rb") as file:
            for expected, frame in enumerate(iter_frames(file, SNAPSHOT_MAGIC)):
                offset = frame.offset
                if frame.seq != expected:
                    raise _corrupt(path, offset, f"item {frame.seq} where {expected} was expected")
                item = _decode_item(path, offset, expected, frame.payload)
                if isinstance(item, SnapshotEnd):
                    if item.items != expected or file.read(1):
                        raise _corrupt(path, offset, "end marker in the wrong place")
                    return
                yield item
            raise _corrupt(path, path.stat().st_size, "the file ends without its end marker")
    except FrameError as exc:
        raise _corrupt(path, exc.offset, exc.reason) from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _corrupt(path, offset, f"unreadable item ({exc})") from None
    except OSError as exc:
        raise storage_error("could not read snapshot", path, exc) from exc


def _decode_item(path: Path, offset: int, number: int, payload: bytes) -> SnapshotItem:
    if number:
        return SNAPSHOT_DECODER.decode(payload)
    header = _HEADER_DECODER.decode(payload)  # the format first, whatever the rest
    if header.format != FORMAT:
        if header.format == 1:
            raise StorageError(
                f"the snapshot {path} was written by an earlier development format of arrwDB "
                "that this version does not read; export the data with the version that wrote "
                "it, or start with an empty data directory",
                path=str(path),
            )
        raise _corrupt(path, offset, f"not a snapshot of a known format ({header.format})")
    return SNAPSHOT_DECODER.decode(payload)


class _Format(msgspec.Struct, tag="header"):
    format: int


_HEADER_DECODER = msgspec.msgpack.Decoder(_Format)


def _corrupt(path: Path, offset: int, reason: str) -> StorageError:
    return StorageError(
        f"corrupt snapshot {path} at byte {offset}: {reason}", path=str(path), offset=offset
    )
