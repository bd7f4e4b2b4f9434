"""In-memory fakes of the ports that tests plug in instead of a real adapter."""

from __future__ import annotations

import threading

from arrwdb.domain.errors import HistoryLostError
from arrwdb.domain.events import Event


class ListHistory:
    """An ``EventHistory`` over a list: what a store that keeps its log would read back.

    ``record(events)`` appends what was committed; ``trim(before)`` forgets the events before
    an id, as a log's retention would; ``reads`` counts the calls of ``events_after``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[Event] = []
        self._first = 1
        self.reads = 0

    def record(self, events: list[Event]) -> None:
        with self._lock:
            self.events.extend(events)

    def trim(self, before: int) -> None:
        with self._lock:
            self.events = [e for e in self.events if e.seq >= before]
            self._first = max(self._first, before)

    @property
    def earliest(self) -> int:
        with self._lock:
            return self.events[0].seq if self.events else self._first

    def events_after(
        self, after: int, limit: int, library_id: str | None, until: int
    ) -> tuple[list[Event], int]:
        with self._lock:
            self.reads += 1
            if after + 1 < (self.events[0].seq if self.events else self._first):
                raise HistoryLostError(after, self.events[0].seq if self.events else self._first)
            found: list[Event] = []
            through = after
            for event in self.events:
                if event.seq <= after:
                    continue
                if event.seq > until:
                    break
                if library_id is None or event.library_id == library_id:
                    found.append(event)
                through = event.seq
                if len(found) >= limit:
                    break
            return found, through
