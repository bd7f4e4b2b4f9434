"""The write pipeline: writes are ordered under a lock, made durable together, applied in order.

A write goes through three steps:

1. **order** (the caller holds the service's commit lock): validate against the state as it
   will be after every write ordered so far, give the events their ids, hand the change to the
   repository (which puts it in its log) and take a *turn* (``CommitPipeline.order``);
2. **wait** (no lock): ``Commit.wait()`` until the repository has made it durable. Concurrent
   writes wait together, so a durable store fsyncs once for all of them (group commit);
3. **apply**, in turn order: change the indexes and the state readers see, publish the events.

So a write is acknowledged only once durable, readers and subscribers never see a write before
it is durable, and events are published in id order, while writers no longer queue behind each
other's fsync.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from arrwdb.domain.ports import Commit


class CommitPipeline:
    """Turns: ``order()`` hands them out in order; ``finish`` applies them in that order."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._ordered = 0
        self._applied = 0

    def order(self) -> int:
        """The next turn. The caller holds the commit lock and calls ``finish`` with it."""
        self._ordered += 1
        return self._ordered

    def finish(self, turn: int, commit: Commit, apply: Callable[[], None]) -> None:
        """Wait for ``commit`` (outside any lock), then run ``apply`` once every earlier turn
        has finished. If the commit fails, ``apply`` is skipped and the error raised; the turn
        is passed on in every case, so a failed write never holds back the ones after it."""
        failure: BaseException | None = None
        try:
            commit.wait()
        except BaseException as exc:  # re-raised below, after the turn is passed on
            failure = exc
        with self._cond:
            while self._applied != turn - 1:
                self._cond.wait()
            try:
                if failure is None:
                    apply()
            finally:
                self._applied = turn
                self._cond.notify_all()
        if failure is not None:
            raise failure

    def drain(self) -> None:
        """Wait until every ordered write has finished."""
        with self._cond:
            target = self._ordered
            while self._applied < target:
                self._cond.wait()
