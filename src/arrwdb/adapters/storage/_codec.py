"""Bytes on disk for the durable store: checksummed frames, and the msgpack records in them.

A *frame* is the unit both the write-ahead log and snapshot files are made of::

    offset  size  field
    0       4     magic      b"AWL1" (log) or b"AWS1" (snapshot)
    4       4     length     u32 little-endian, payload bytes
    8       8     sequence   u64 little-endian (log: record number; snapshot: item number)
    16      4     crc32      zlib.crc32 over the payload, continued over header bytes 0..16
    20      ...   payload    msgpack (msgspec)

Payloads are msgspec tagged unions of the domain's own dataclasses (``Library``, ``Document``,
``Event``), so a field added to a model with a default is written and read without a change
here. Embeddings are encoded as raw little-endian float32 bytes and decoded without a copy into
read-only arrays.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any, Final, NamedTuple

import msgspec
import numpy as np

from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library

WAL_MAGIC: Final = b"AWL1"
SNAPSHOT_MAGIC: Final = b"AWS1"
HEADER: Final = struct.Struct("<4sIQI")
MAX_PAYLOAD: Final = 2**32 - 1


class FrameError(Exception):
    """A frame that cannot be read: torn, overwritten or not a frame at all."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"{reason} at byte {offset}")
        self.offset = offset
        self.reason = reason


class Frame(NamedTuple):
    seq: int
    payload: bytes
    offset: int
    end: int


def frame_header(magic: bytes, seq: int, length: int, payload_crc: int) -> bytes:
    """The 20-byte header that precedes a payload of ``length`` bytes whose
    ``zlib.crc32`` is ``payload_crc`` (computed apart, so that it can be done outside a lock)."""
    if length > MAX_PAYLOAD:
        raise ValueError(f"a record of {length} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    head = struct.pack("<4sIQ", magic, length, seq)
    return head + struct.pack("<I", zlib.crc32(head, payload_crc))


def iter_frames(file: IO[bytes], magic: bytes, offset: int = 0) -> Iterator[Frame]:
    """Frames of ``file`` from ``offset`` (where the file is positioned) to its end.

    Raises ``FrameError`` at the first byte that does not start a complete, intact frame."""
    while True:
        head = file.read(HEADER.size)
        if not head:
            return
        if len(head) < HEADER.size:
            raise FrameError(offset, "truncated record header")
        found, length, seq, crc = HEADER.unpack(head)
        if found != magic:
            raise FrameError(offset, "bad record magic")
        payload = file.read(length)
        if len(payload) < length:
            raise FrameError(offset, "truncated record")
        if zlib.crc32(head[:16], zlib.crc32(payload)) != crc:
            raise FrameError(offset, "record checksum mismatch")
        end = offset + HEADER.size + length
        yield Frame(seq, payload, offset, end)
        offset = end


def intact_frame_in(data: bytes, magic: bytes, min_seq: int) -> int | None:
    """The offset in ``data`` of the first intact frame numbered ``min_seq`` or later, if any.

    Tells a torn tail (nothing intact follows the damage) from damage in the middle."""
    pos = data.find(magic)
    while pos != -1:
        if pos + HEADER.size <= len(data):
            _, length, seq, crc = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + length
            if seq >= min_seq and end <= len(data):
                view = memoryview(data)
                payload_crc = zlib.crc32(view[pos + HEADER.size : end])
                if zlib.crc32(view[pos : pos + 16], payload_crc) == crc:
                    return pos
        pos = data.find(magic, pos + 1)
    return None


# ---- records ---------------------------------------------------------------------------------


class SaveLibrary(msgspec.Struct, tag="save_library"):
    library: Library
    event: Event | None = None


class DeleteLibrary(msgspec.Struct, tag="delete_library"):
    library_id: str
    event: Event


class SaveDocuments(msgspec.Struct, tag="save_documents"):
    library: Library
    documents: list[Document]
    events: list[Event]


class DeleteDocument(msgspec.Struct, tag="delete_document"):
    library: Library
    document_id: str
    event: Event


#: One committed write: the body of one log record.
Operation = SaveLibrary | DeleteLibrary | SaveDocuments | DeleteDocument


class SnapshotHeader(msgspec.Struct, tag="header"):
    format: int
    last_seq: int
    created_at: datetime
    #: the last document position handed out (list cursors are positions); 0 in older files
    document_seq: int = 0


class LibraryItem(msgspec.Struct, tag="library"):
    library: Library


class DocumentsItem(msgspec.Struct, tag="documents"):
    library_id: str
    documents: list[Document]
    #: each document's position in its library's insertion order (``None`` in older files:
    #: then numbered afresh), kept so that list cursors stay valid across a restart
    positions: list[int] | None = None


class EventsItem(msgspec.Struct, tag="events"):
    events: list[Event]


class SnapshotEnd(msgspec.Struct, tag="end"):
    items: int


#: One frame of a snapshot file.
SnapshotItem = SnapshotHeader | LibraryItem | DocumentsItem | EventsItem | SnapshotEnd


_FLOAT32_LE: Final = np.dtype("<f4")
_NATIVE_LE: Final = sys.byteorder == "little"


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return np.ascontiguousarray(obj, dtype=_FLOAT32_LE).data.cast("B")
    raise NotImplementedError(f"cannot store a {type(obj).__name__}")


def _dec_hook(kind: Any, obj: Any) -> Any:
    if type(obj) is bytes and getattr(kind, "__origin__", None) is np.ndarray:
        vector = np.frombuffer(obj, dtype=_FLOAT32_LE)  # read-only, no copy
        return vector if _NATIVE_LE else vector.astype(np.float32)
    raise NotImplementedError(f"cannot read a {kind!r}")


ENCODER: Final = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
OPERATION_DECODER: Final[msgspec.msgpack.Decoder[Operation]] = msgspec.msgpack.Decoder(
    Operation, dec_hook=_dec_hook
)
SNAPSHOT_DECODER: Final[msgspec.msgpack.Decoder[SnapshotItem]] = msgspec.msgpack.Decoder(
    SnapshotItem, dec_hook=_dec_hook
)
