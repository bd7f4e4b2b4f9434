"""BLAS on one thread while the watches score a batch (``SerialBlas``, the ``SerialCompute`` the
container wires): the thread count is 1 inside a context, restored when the last one closes
(nested, overlapping across threads, or left by an exception), and the projector opens one
around the watches' work of a write to a watched library only."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import arrwdb
from arrwdb.adapters.compute.blas import SerialBlas
from arrwdb.domain import _watch_engine


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def two_threads() -> Iterator[None]:
    """BLAS on 2 threads for the test (so that a limit to 1 shows), whatever the machine."""
    if not _blas_threads():
        pytest.skip("numpy's BLAS is not one threadpoolctl can see")
    with threadpool_limits(2, user_api="blas"):
        yield


@pytest.mark.usefixtures("two_threads")
def test_blas_runs_on_one_thread_inside_and_as_before_after() -> None:
    serial = SerialBlas()
    before = _blas_threads()
    with serial():
        assert set(_blas_threads()) == {1}
        with serial():  # nested: still one thread, and the outer context keeps it
            assert set(_blas_threads()) == {1}
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before
    with pytest.raises(ZeroDivisionError), serial():
        1 / 0  # noqa: B018
    assert _blas_threads() == before


@pytest.mark.usefixtures("two_threads")
def test_overlapping_contexts_on_two_threads_restore_the_count_once_both_close() -> None:
    serial = SerialBlas()
    before = _blas_threads()
    entered, release = threading.Event(), threading.Event()
    seen: list[list[int]] = []

    def other() -> None:
        with serial():
            entered.set()
            release.wait(10)
            seen.append(_blas_threads())

    thread = threading.Thread(target=other)
    with serial():
        thread.start()
        assert entered.wait(10)
    # this thread's context closed first: the other's is open, the limit stays
    assert set(_blas_threads()) == {1}
    release.set()
    thread.join(10)
    assert seen == [[1] * len(before)]
    assert _blas_threads() == before


@pytest.mark.usefixtures("two_threads")
def test_the_watches_of_a_write_score_it_on_one_thread_and_other_writes_do_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[list[int]] = []
    original = _watch_engine.WatchBook.after_batch

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(_blas_threads())
        original(self, *args, **kwargs)

    monkeypatch.setattr(_watch_engine.WatchBook, "after_batch", recording)
    before = _blas_threads()
    rng = np.random.default_rng(7)
    with arrwdb.open() as db:
        watched = db.create_library("watched", index="hnsw", dimension=8, embedder=None)
        quiet = db.create_library("quiet", index="hnsw", dimension=8, embedder=None)
        watch = watched.watch(rng.standard_normal(8).astype(np.float32), k=3)
        docs = [{"chunks": [{"text": "t", "embedding": v}]} for v in rng.standard_normal((20, 8))]
        seen.clear()
        quiet.add_documents(docs)
        watched.add_documents(docs)
        quiet.add_documents(docs)
        assert seen == [before, [1] * len(before), before]
        watch.close()
    assert _blas_threads() == before
