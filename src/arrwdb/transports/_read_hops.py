"""Shared worker-thread hops for read actions (see :class:`ReadHops`).

A read that arrives while ``lanes`` hops are already running waits for the next hop and goes
with every read queued meanwhile. Each read still runs on its own (its result or its exception
is its own), but pipelined WebSocket requests and concurrent REST calls no longer pay a thread
hop each, nor have dozens of threads fight over the GIL with the event loop.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from arrwdb.domain.access import Caller
from arrwdb.domain.service import VectorDBService
from arrwdb.transports.convert import search_out, search_query

if TYPE_CHECKING:
    from arrwdb.transports.dispatch import Action

_NOT_RUN = RuntimeError("the read was not run")  # a marker, never raised


class Read:
    """One read waiting for (or riding in) a worker-thread hop."""

    __slots__ = (
        "action",
        "caller",
        "done",
        "error",
        "lead",
        "library_id",
        "request",
        "result",
        "service",
        "then",
    )

    def __init__(
        self,
        action: Action,
        service: VectorDBService,
        library_id: str | None,
        request: Any,
        caller: Caller,
        then: Callable[[Any], Any] | None,
    ) -> None:
        self.action = action
        self.caller = caller
        self.service = service
        self.library_id = library_id
        self.request = request
        self.then = then
        self.done = anyio.Event()
        self.lead = False  # woken to run the next hop (rather than with a result)
        self.result: Any = None
        self.error: BaseException | None = _NOT_RUN

    def run(self) -> None:  # in the worker thread
        try:
            self.finish(
                self.action.perform(self.service, self.library_id, self.request, self.caller)
            )
        except Exception as exc:  # raised to its own caller only
            self.error = exc

    def finish(self, result: Any) -> None:  # in the worker thread
        self.result = result if self.then is None else self.then(result)
        self.error = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def _run_reads(batch: list[Read]) -> None:
    """Run a hop's reads (all of one library). Its searches of an HNSW library go through
    ``search_many`` together (one batched index call; ``took_ms`` is then each one's share of
    it): the same hits; and if any of them is refused, each one runs on its own, to get its
    own error."""
    searches: list[Read] = []
    for read in batch:
        if read.action.name == "search":
            searches.append(read)
        else:
            read.run()
    if len(searches) > 1 and _batchable(searches[0]):
        first = searches[0]
        try:
            assert isinstance(first.library_id, str)
            results = first.service.search_many(
                first.library_id, [search_query(read.request) for read in searches]
            )
        except Exception:  # someone's error: each one gets its own, as on its own
            pass
        else:
            for read, result in zip(searches, results, strict=True):
                try:
                    read.finish(search_out(result, read.request.include))
                except Exception as exc:
                    read.error = exc
            return
    for read in searches:
        read.run()


def _batchable(read: Read) -> bool:
    """Whether searches of this library may be batched: HNSW only, where a batched search
    gives exactly the scores of single ones (the exact index may differ in the last bit)."""
    try:
        return isinstance(read.library_id, str) and (
            read.service.get_library(read.library_id).index == "hnsw"
        )
    except Exception:  # e.g. not found: each search reports it
        return False


class ReadHops:
    """Read actions in worker threads, at most ``lanes`` hops at a time; reads that arrive
    while every lane is busy queue up and go together (up to ``max_batch``) in the next hop.

    No task of its own: the caller that finds a free lane runs the hop (its own read first,
    then the queued ones) and, when it ends, hands the lane to the oldest queued read, whose
    caller runs the next hop. Used from the event loop only."""

    def __init__(self, lanes: int, max_batch: int) -> None:
        self._lanes = max(1, lanes)
        self._max_batch = max(1, max_batch)
        self._busy = 0
        self._queue: deque[Read] = deque()

    async def run(self, read: Read) -> Any:
        if self._busy < self._lanes:
            self._busy += 1
            return await self._hop(read)
        self._queue.append(read)
        try:
            await read.done.wait()
        except BaseException:  # cancelled: leave the queue, or pass the lane on
            if read.lead:
                self._release()
            elif not read.done.is_set():
                with contextlib.suppress(ValueError):
                    self._queue.remove(read)
            raise
        if read.lead:
            return await self._hop(read)
        return read.outcome()

    async def _hop(self, first: Read) -> Any:
        batch = [first]
        while self._queue and len(batch) < self._max_batch:
            batch.append(self._queue.popleft())
        try:
            # cancellable until the thread starts (then shielded until it is done)
            await anyio.to_thread.run_sync(_run_reads, batch)
        finally:
            # the reads of others that did not run (this caller was cancelled before the
            # thread started) go back to the head of the queue, for the next hop
            unrun = [read for read in batch[1:] if read.error is _NOT_RUN]
            self._queue.extendleft(reversed(unrun))
            for read in batch[1:]:
                if read.error is not _NOT_RUN:
                    read.done.set()
            self._release()
        return first.outcome()

    @property
    def idle(self) -> bool:
        return not self._busy and not self._queue

    def _release(self) -> None:
        if self._queue:
            nxt = self._queue.popleft()
            nxt.lead = True
            nxt.done.set()
        else:
            self._busy -= 1
