"""``SerialCompute`` for OpenBLAS (numpy's BLAS): products on the calling thread only, while a
context is open.

An OpenBLAS worker thread busy-waits for a while (by default about 2^28 cycles, ~0.1 s) after a
multi-threaded product before it sleeps. When a product is followed at once by other
multi-threaded work, such as hnswlib linking a batch into its graph on every core, the spinning
workers take those cores: measured on 2 cores, a 1,000-chunk add to a 20k x 384 HNSW library
took ~60 ms (~13%) longer after the watches' product than without it, and as long as without it
with the product kept on one thread. A product on one thread wakes no worker.

threadpoolctl finds the OpenBLAS that numpy loaded; the count is set with its
``openblas_set_num_threads_local`` (OpenBLAS 0.3.27 and later; measured on numpy's wheels, its
pthreads build keeps one count for the process, so products other threads run while a context
is open are single-threaded too). Contexts nest and may overlap across threads: the first to
open sets one thread, the last to close restores the count found. Where no OpenBLAS has that
call (another BLAS, an older OpenBLAS), the contexts change nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable, Iterator

from threadpoolctl import ThreadpoolController

logger = logging.getLogger("arrwdb.compute")

#: the thread-local setter's name in OpenBLAS builds (numpy's wheels prefix and suffix it)
_SETTERS = (
    "openblas_set_num_threads_local",
    "scipy_openblas_set_num_threads_local64_",
    "scipy_openblas_set_num_threads_local",
)


def _local_setter() -> Callable[[int], int] | None:
    """The loaded OpenBLAS's ``set_num_threads_local`` (returns the thread's count before)."""
    for controller in ThreadpoolController().lib_controllers:
        if controller.internal_api != "openblas":
            continue
        for name in _SETTERS:
            setter = getattr(controller.dynlib, name, None)
            if setter is not None:
                setter.argtypes = [ctypes.c_int]
                setter.restype = ctypes.c_int
                return setter  # type: ignore[no-any-return]
    return None


class SerialBlas:
    """A ``SerialCompute``: call it for a context in which BLAS products run on the calling
    thread alone. Thread-safe."""

    def __init__(self) -> None:
        self._setter: Callable[[int], int] | None = None
        self._looked = False
        self._lock = threading.Lock()
        self._open = 0  # contexts open now
        self._before = 0  # the count the first of them found

    @property
    def available(self) -> bool:
        """Whether the contexts take effect (an OpenBLAS with a per-thread count is loaded)."""
        if not self._looked:  # the first use: numpy (and its BLAS) is loaded by then
            self._setter = _local_setter()
            self._looked = True
            if self._setter is None:
                logger.debug("no OpenBLAS with a per-thread count: products are not limited")
        return self._setter is not None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self.available:
            yield
            return
        setter = self._setter
        assert setter is not None
        with self._lock:
            if self._open == 0:
                self._before = setter(1)
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if self._open == 0:
                    setter(self._before)
