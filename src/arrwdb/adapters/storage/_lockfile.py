"""The ``LOCK`` file: one open store per data directory.

``fcntl.flock`` locks belong to an open file description, so a second store fails whether it is
in another process or in this one, and the kernel releases the lock when the holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from arrwdb.adapters.storage._segments import storage_error
from arrwdb.domain.errors import StorageError

LOCK_FILE: Final = "LOCK"


def lock_directory(directory: Path) -> int:
    """Lock ``directory`` for this store; the returned descriptor holds the lock until closed.

    Raises ``StorageError`` naming the directory (and the holder's pid) if it is taken."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise storage_error("could not open the lock file", path, exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StorageError(
            f"the data directory {directory} is already in use by another arrwDB store "
            f"(process {holder}); close that store or use another directory",
            path=str(directory),
        ) from None
    except OSError as exc:
        os.close(fd)
        raise storage_error("could not lock", path, exc) from exc
    with contextlib.suppress(OSError):  # the pid only makes the message above friendlier
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
