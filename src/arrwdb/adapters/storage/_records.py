"""Reading the write-ahead log back by position: the index of its records, their events, their
batches.

The disk store keeps one small entry per record of the segments it still has (the records a
snapshot covers stay as long as the event history needs them): which positions it holds, of
which library, when, and where it is. So the change stream reads the events of positions that
left the hub's memory straight from the log: only a record's events part (not its changes,
which carry every embedding), skipping records of other libraries without reading them, and a
small cache of decoded events serves the readers that follow one another through a large
commit.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from arrwdb.adapters.storage._codec import (
    HEADER,
    RecordHead,
    decode_events,
    decode_record,
    read_head,
)
from arrwdb.domain.changes import Batch
from arrwdb.domain.errors import HistoryLostError
from arrwdb.domain.events import Event

logger = logging.getLogger("arrwdb.storage")

#: Records whose decoded events are kept for the next reader.
CACHED_RECORDS = 4


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of the log, as the index knows it."""

    seq: int
    head: RecordHead
    path: Path
    #: where the record's frame starts in ``path``
    offset: int
    length: int

    @property
    def first(self) -> int:
        return self.head.first

    @property
    def last(self) -> int:
        return self.head.last

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes of the payload from ``start``. Raises ``OSError``."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            data = os.pread(fd, length, self.offset + HEADER.size + start)
        finally:
            os.close(fd)
        if len(data) != length:
            raise OSError(f"{self.path} ends inside record {self.seq}")
        return data


def take_events(
    events: Iterable[Event],
    after: int,
    until: int,
    library_id: str | None,
    found: list[Event],
    limit: int,
) -> tuple[int, bool]:
    """Append to ``found`` the events of ``library_id`` (``None``: every library) with
    positions in ``(after, until]``, in order, until it holds ``limit``. Returns the position
    read through (``after`` if none was in range) and whether ``found`` is full."""
    through = after
    for event in events:
        seq = event.seq
        if seq <= after:
            continue
        if seq > until:
            break
        if library_id is None or event.library_id == library_id:
            found.append(event)
        through = seq
        if len(found) >= limit:
            return through, True
    return through, False


class RecordIndex:
    """The records of the log by position; thread-safe."""

    def __init__(self, max_age: float | None = None) -> None:
        self._lock = threading.Lock()
        self._entries: list[Entry] = []
        self._firsts: list[int] = []  # entries[i].first, for bisect
        self._max_age = max_age
        self._cache: OrderedDict[int, list[Event]] = OrderedDict()
        self._cache_lock = threading.Lock()
        #: events older than the first record, from a snapshot (consecutive ids)
        self._seed: list[Event] = []
        #: the first position of the first record (0: none yet); read without the lock
        self.first_position = 0

    def seed(self, events: list[Event]) -> None:
        """Keep ``events`` (consecutive, oldest first: a snapshot's) as the history before the
        records that follow."""
        with self._lock:
            self._seed = list(events)

    def add(self, seq: int, payload_start: bytes, path: Path, offset: int, length: int) -> None:
        """Index a record from the start of its payload (see ``_codec.read_head``). A record
        that does not follow the last one (an unreadable one was skipped) starts the index
        afresh: the history before it is lost."""
        try:
            head = read_head(payload_start)
        except ValueError:
            logger.warning(
                "record %d in %s has an unreadable head; history before it is lost", seq, path
            )
            self.clear()
            return
        self.add_head(seq, head, path, offset, length)

    def add_head(self, seq: int, head: RecordHead, path: Path, offset: int, length: int) -> None:
        """Index a record whose head is known (it was just written)."""
        if head.size == 0:
            return
        entry = Entry(seq, head, path, offset, length)
        with self._lock:
            if self._entries and (
                head.first != self._entries[-1].last + 1 or seq <= self._entries[-1].seq
            ):
                self._entries.clear()
                self._firsts.clear()
            self._entries.append(entry)
            self._firsts.append(head.first)
            self.first_position = self._firsts[0]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._firsts.clear()
            self._seed = []
            self.first_position = 0

    def drop_before(self, seq: int) -> None:
        """Forget the records numbered below ``seq`` (their segments were deleted)."""
        with self._lock:
            keep = 0
            while keep < len(self._entries) and self._entries[keep].seq < seq:
                keep += 1
            del self._entries[:keep]
            del self._firsts[:keep]
            self.first_position = self._firsts[0] if self._firsts else 0

    def seq_needed(self, head: int, history_size: int) -> int | None:
        """The number of the oldest record the event history needs: the one holding the
        position ``history_size`` before ``head`` (or younger than the maximum age); ``None``
        when it needs none."""
        keep = head - history_size + 1
        if self._max_age is not None:
            keep = max(keep, self.earliest(head))
        with self._lock:
            if not self._entries or keep > head:
                return None
            i = max(0, bisect.bisect_right(self._firsts, keep) - 1)
            return self._entries[i].seq

    def latest_events(self, position: int, count: int) -> list[Event]:
        """The events of the last ``count`` positions up to ``position`` that are kept, if
        they are kept unbroken up to it (else none): what a snapshot carries."""
        events: list[Event] = []
        after = max(0, position - count, self.earliest(position) - 1)
        with contextlib.suppress(HistoryLostError):
            while after < position:
                page, through = self.events_after(after, count, None, position, position)
                if through <= after:
                    break
                events.extend(page)
                after = through
        if events and (
            events[-1].seq != position or events[-1].seq - events[0].seq + 1 != len(events)
        ):
            return []
        return events

    def earliest(self, head: int) -> int:
        """The oldest position whose event is kept (``head + 1`` when none is)."""
        horizon = None if self._max_age is None else time.time() - self._max_age
        with self._lock:
            entries, seed = self._entries, self._joined_seed()
            for event in seed:
                if horizon is None or event.timestamp.timestamp() >= horizon:
                    return event.seq
            for entry in entries:
                if horizon is None or entry.head.at >= horizon:
                    return entry.first
            return head + 1

    def _joined_seed(self) -> list[Event]:
        """The seed, if it joins the records (caller holds the lock)."""
        seed, entries = self._seed, self._entries
        if not seed or (entries and seed[-1].seq + 1 < entries[0].first):
            return []
        return seed

    def _from(self, position: int, earliest: int) -> list[Entry]:
        """The entries from the one holding ``position`` on; raises ``HistoryLostError`` if
        ``position`` is before ``earliest``."""
        if position < earliest:
            raise HistoryLostError(position - 1, earliest)
        with self._lock:
            i = bisect.bisect_right(self._firsts, position) - 1
            return self._entries[max(0, i) :]

    def _first_position(self, head: int) -> int:
        with self._lock:
            return self._entries[0].first if self._entries else head + 1

    # -- reading ------------------------------------------------------------------------------

    def events_after(
        self, after: int, limit: int, library_id: str | None, until: int, head: int
    ) -> tuple[list[Event], int]:
        """See ``ports.EventHistory.events_after``; ``head`` is the last durable position."""
        until = min(until, head)
        if after >= until:
            return [], after
        found: list[Event] = []
        through = after
        earliest = self.earliest(head)
        if after + 1 < earliest:
            raise HistoryLostError(after, earliest)
        with self._lock:
            seed = self._joined_seed()
            records_from = self._entries[0].first if self._entries else head + 1
        if seed and after + 1 < records_from:  # the part a snapshot kept
            kept = seed[max(0, after + 1 - seed[0].seq) :]
            read, full = take_events(
                kept, after, min(until, records_from - 1), library_id, found, limit
            )
            through = max(through, read)
            if full:
                return found, through
            if through >= until or through + 1 < records_from:
                return found, through
            after = through
        for entry in self._from(after + 1, 0):
            if entry.first > until:
                break
            if library_id is not None and entry.head.library and entry.head.library != library_id:
                through = min(entry.last, until)  # all of another library: skipped unread
                continue
            read, full = take_events(
                self._events_or_seed(entry), after, until, library_id, found, limit
            )
            through = max(through, read)
            if full:
                return found, through
            if through >= until:
                break
        return found, through

    def _events_or_seed(self, entry: Entry) -> list[Event]:
        """A record's events; if they cannot be read, the snapshot's copy of them, if it has
        them all."""
        try:
            return self._events(entry)
        except HistoryLostError:
            with self._lock:
                seed = self._seed
            if seed and seed[0].seq <= entry.first and entry.last <= seed[-1].seq:
                start = entry.first - seed[0].seq
                return seed[start : start + entry.head.size]
            raise

    def _events(self, entry: Entry) -> list[Event]:
        with self._cache_lock:
            cached = self._cache.get(entry.seq)
            if cached is not None:
                self._cache.move_to_end(entry.seq)
                return cached
        head = entry.head
        try:
            events = decode_events(head, entry.read(head.events_offset, head.events_length))
        except (OSError, ValueError) as exc:
            logger.warning(
                "cannot read the events of record %d (%s): %s", entry.seq, entry.path, exc
            )
            raise HistoryLostError(entry.first - 1, entry.last + 1) from None
        with self._cache_lock:
            self._cache[entry.seq] = events
            while len(self._cache) > CACHED_RECORDS:
                self._cache.popitem(last=False)
        return events

    def batches_after(
        self, after: int, limit: int, head: int, tail: Callable[[int], Batch | None]
    ) -> list[Batch]:
        """Whole batches after ``after`` up to ``head``, about ``limit`` changes: from
        ``tail(first)`` (batches still in memory) or decoded from the log."""
        if after >= head:
            return []
        out: list[Batch] = []
        count = 0
        for entry in self._from(after + 1, self._first_position(head)):
            if entry.first > head or (out and count + entry.head.size > limit):
                break
            batch = tail(entry.first)
            if batch is None:
                try:
                    batch = decode_record(entry.read(0, entry.length))
                except (OSError, ValueError) as exc:
                    logger.warning("cannot read record %d (%s): %s", entry.seq, entry.path, exc)
                    raise HistoryLostError(entry.first - 1, entry.last + 1) from None
            out.append(batch)
            count += len(batch)
        return out
