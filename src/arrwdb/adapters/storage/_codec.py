"""Bytes on disk for the durable store: checksummed frames, and the records in them.

A *frame* is the unit both the write-ahead log and snapshot files are made of::

    offset  size  field
    0       4     magic      b"AWL2" (log) or b"AWS1" (snapshot)
    4       4     length     u32 little-endian, payload bytes
    8       8     sequence   u64 little-endian (log: record number; snapshot: item number)
    16      4     crc32      zlib.crc32 over the payload, continued over header bytes 0..16
    20      ...   payload

A log record's payload is one committed batch of changes (``domain.changes.Batch``)::

    offset  size  field
    0       8     first      u64, the position of the batch's first change
    8       4     count      u32, changes in the batch
    12      8     at         f64, the last change's time (seconds since the epoch)
    20      4     events     u32, bytes of the events part
    24      4     events crc u32, zlib.crc32 of the events part
    28      2     library    u16, bytes of the library id
    30      ...   library id UTF-8: the one library every change is of ("" if several)
    ...           events     msgpack: the batch's change events (``Event``), in order
    ...           changes    msgpack: the kind of each change in order, then the changes
                             of each kind (``_Body``: one list per kind)

The head and the events part let the change stream read a record's events without reading its
changes (which carry every embedding): ``read_head`` and ``decode_events``. msgpack bodies are
the domain's own dataclasses (``Library``, ``Document``, ``Event``, the changes), so a field
added to a model with a default is written and read without a change here. Embeddings are raw
little-endian float32 bytes, decoded without a copy into read-only arrays.
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

from arrwdb.domain.changes import (
    Batch,
    Change,
    DocumentDeleted,
    DocumentSaved,
    LibraryCreated,
    LibraryDeleted,
    LibraryUpdated,
    Receipt,
    WriteKey,
)
from arrwdb.domain.events import Event
from arrwdb.domain.models import Document, Library

WAL_MAGIC: Final = b"AWL2"
#: The log format before change positions (arrwDB 0.1 development builds): not read.
OLD_WAL_MAGIC: Final = b"AWL1"
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


# ---- log records -----------------------------------------------------------------------------

RECORD_HEAD: Final = struct.Struct("<QIdIIH")
#: Enough of a payload to hold any record's head (the library id is at most 256 characters).
MAX_HEAD_BYTES: Final = RECORD_HEAD.size + 4 * 256


class RecordHead(NamedTuple):
    first: int
    #: the number of changes
    size: int
    at: float
    #: the one library of every change in the record, or "" if several
    library: str
    events_offset: int
    events_length: int
    events_crc: int

    @property
    def last(self) -> int:
        return self.first + self.size - 1

    @property
    def changes_offset(self) -> int:
        return self.events_offset + self.events_length


def encode_record(batch: Batch) -> tuple[list[bytes], RecordHead]:
    """The payload of the log record of ``batch``, in parts (to be written in order), and its
    head."""
    changes = batch.changes
    first = changes[0].library_id if changes else ""
    library = first if all(change.library_id == first for change in changes) else ""
    raw_library = library.encode()
    events = encode_events(batch)
    body = encode_changes(batch)
    at = changes[-1].at.timestamp() if changes else 0.0
    crc = zlib.crc32(events)
    packed = RECORD_HEAD.pack(batch.first, len(changes), at, len(events), crc, len(raw_library))
    offset = RECORD_HEAD.size + len(raw_library)
    head = RecordHead(batch.first, len(changes), at, library, offset, len(events), crc)
    return [packed, raw_library, events, body], head


def read_head(payload: bytes | memoryview) -> RecordHead:
    """The head of a record from the start of its payload (``MAX_HEAD_BYTES`` suffice).
    Raises ``ValueError`` if it is not one."""
    if len(payload) < RECORD_HEAD.size:
        raise ValueError("record too short for its head")
    first, count, at, events_length, events_crc, library_length = RECORD_HEAD.unpack_from(payload)
    end = RECORD_HEAD.size + library_length
    if len(payload) < end:
        raise ValueError("record too short for its library id")
    library = bytes(payload[RECORD_HEAD.size : end]).decode()
    return RecordHead(first, count, at, library, end, events_length, events_crc)


def decode_events(head: RecordHead, events: bytes | memoryview) -> list[Event]:
    """A record's events part (``head.events_length`` bytes). Raises ``ValueError`` if it is
    damaged."""
    if zlib.crc32(events) != head.events_crc:
        raise ValueError("checksum mismatch in the events of a record")
    try:
        return EVENTS_DECODER.decode(events)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"unreadable events ({exc})") from None


def decode_record(payload: bytes) -> Batch:
    """The batch a record holds. Raises ``ValueError`` if it is unreadable."""
    head = read_head(payload)
    return decode_changes(head.first, head.size, memoryview(payload)[head.changes_offset :])


def encode_changes(batch: Batch) -> bytes:
    """The changes part of a record (its changes and idempotency key) on its own (a database
    row keeps it in a column)."""
    return ENCODER.encode(_body_of(batch.changes, batch.key))


def encode_changes_sharing(batch: Batch) -> tuple[bytes, dict[tuple[str, str], bytes]]:
    """``encode_changes``, with each saved document's change encoded once and also returned,
    by (library id, document id) (the last one of each): a database table keeps the same
    bytes (``decode_saved_document``)."""
    body = _body_of(batch.changes, batch.key)
    saved: dict[tuple[str, str], bytes] = {}
    raws: list[Any] = []
    for change in body.document_saved:
        encoded = ENCODER.encode(change)
        saved[(change.document.library_id, change.document.id)] = encoded
        raws.append(msgspec.Raw(encoded))
    body.document_saved = raws
    return ENCODER.encode(body), saved


def decode_saved_document(data: bytes | memoryview) -> Document:
    """The document of an encoded ``DocumentSaved``. Raises ``ValueError``."""
    try:
        return _SAVED_DECODER.decode(data).document
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"unreadable document ({exc})") from None


def encode_events(batch: Batch) -> bytes:
    """The events part of a record on its own."""
    return ENCODER.encode(batch.events())


def decode_changes(first: int, size: int, body: bytes | memoryview) -> Batch:
    """The batch of ``size`` changes from position ``first`` whose changes part is ``body``.
    Raises ``ValueError`` if it is unreadable."""
    try:
        decoded = _BODY_DECODER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"unreadable changes ({exc})") from None
    columns = [iter(column) for column in _columns(decoded)]
    try:
        changes = tuple(next(columns[kind]) for kind in decoded.order)
    except (IndexError, StopIteration):
        raise ValueError("the changes of a record do not match their order") from None
    if len(changes) != size or any(next(column, None) is not None for column in columns):
        raise ValueError(f"record says {size} changes but holds others")
    return Batch(first, changes, decoded.key)


def decode_event_list(events: bytes | memoryview) -> list[Event]:
    """An events part without its checksum (a database row's). Raises ``ValueError``."""
    try:
        return EVENTS_DECODER.decode(events)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"unreadable events ({exc})") from None


def encode_library(library: Library) -> bytes:
    return ENCODER.encode(library)


def decode_library(data: bytes | memoryview) -> Library:
    """Raises ``ValueError``."""
    try:
        return _LIBRARY_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"unreadable library ({exc})") from None


class _Body(msgspec.Struct, array_like=True):
    """A record's changes: one list per kind (decoded in one call each), and the kind of
    each change in order (one byte each: its index in ``_KIND_INDEX``)."""

    order: bytes
    library_created: list[LibraryCreated]
    library_updated: list[LibraryUpdated]
    library_deleted: list[LibraryDeleted]
    document_saved: list[DocumentSaved]
    document_deleted: list[DocumentDeleted]
    #: the write's idempotency key (records written before keys existed have none)
    key: WriteKey | None = None


_KIND_INDEX: Final = {
    cls: index
    for index, cls in enumerate(
        (LibraryCreated, LibraryUpdated, LibraryDeleted, DocumentSaved, DocumentDeleted)
    )
}


def _columns(body: _Body) -> list[list[Any]]:
    return [
        body.library_created,
        body.library_updated,
        body.library_deleted,
        body.document_saved,
        body.document_deleted,
    ]


def _body_of(changes: tuple[Change, ...], key: WriteKey | None = None) -> _Body:
    body = _Body(b"", [], [], [], [], [], key)
    columns = _columns(body)
    order = bytearray()
    for change in changes:
        index = _KIND_INDEX[type(change)]
        order.append(index)
        columns[index].append(change)
    body.order = bytes(order)
    return body


# ---- snapshots -------------------------------------------------------------------------------


class SnapshotHeader(msgspec.Struct, tag="header"):
    format: int
    #: the last log record the snapshot covers
    last_seq: int
    created_at: datetime
    #: the position of the last change it reflects
    position: int = 0


class LibraryItem(msgspec.Struct, tag="library"):
    library: Library


class DocumentsItem(msgspec.Struct, tag="documents"):
    library_id: str
    documents: list[Document]
    #: each document's list position (the position of the change that added it), kept so
    #: that list cursors stay valid across a restart
    positions: list[int]


class EventsItem(msgspec.Struct, tag="events"):
    """The latest events, oldest first (the event history of a store opened from it)."""

    events: list[Event]


class ReceiptsItem(msgspec.Struct, tag="receipts"):
    """The remembered idempotency keys, oldest first (``encode_receipt``)."""

    receipts: list[bytes]


class SnapshotEnd(msgspec.Struct, tag="end"):
    items: int


#: One frame of a snapshot file.
SnapshotItem = (
    SnapshotHeader | LibraryItem | DocumentsItem | EventsItem | ReceiptsItem | SnapshotEnd
)


class _Receipt(msgspec.Struct, array_like=True):
    key: str
    fingerprint: str
    first: int
    at: datetime
    body: _Body


def encode_receipt(key: str, receipt: Receipt) -> bytes:
    """A remembered idempotency key and what its write left."""
    batch = receipt.batch
    return ENCODER.encode(
        _Receipt(key, receipt.fingerprint, batch.first, receipt.at, _body_of(batch.changes))
    )


def decode_receipt(data: bytes | memoryview) -> tuple[str, Receipt]:
    """Raises ``ValueError``."""
    try:
        item = _RECEIPT_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"unreadable receipt ({exc})") from None
    body = ENCODER.encode(item.body)
    batch = decode_changes(item.first, len(item.body.order), body)
    return item.key, Receipt(item.fingerprint, batch, item.at)


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
EVENTS_DECODER: Final[msgspec.msgpack.Decoder[list[Event]]] = msgspec.msgpack.Decoder(list[Event])
_BODY_DECODER: Final = msgspec.msgpack.Decoder(_Body, dec_hook=_dec_hook)
_LIBRARY_DECODER: Final = msgspec.msgpack.Decoder(Library)
_RECEIPT_DECODER: Final = msgspec.msgpack.Decoder(_Receipt, dec_hook=_dec_hook)
_SAVED_DECODER: Final = msgspec.msgpack.Decoder(DocumentSaved, dec_hook=_dec_hook)
SNAPSHOT_DECODER: Final[msgspec.msgpack.Decoder[SnapshotItem]] = msgspec.msgpack.Decoder(
    SnapshotItem, dec_hook=_dec_hook
)
