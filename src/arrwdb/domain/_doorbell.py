"""Waking coroutines that wait on other threads' news: each waiter is a bare future of its own
event loop, resolved on that loop (``call_soon_threadsafe`` when the news comes from another
thread). Shared by the event hub and the watch feeds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

Waiters = dict[asyncio.AbstractEventLoop, set[asyncio.Future[None]]]


def wake(waiters: Waiters) -> None:
    """Resolve every waiter, each on its own loop."""
    if not waiters:
        return
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, futures in waiters.items():
        if loop is current:
            resolve(futures)
        else:
            # a closed loop raises RuntimeError: its waiters are gone with it
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(resolve, futures)


def resolve(futures: Iterable[asyncio.Future[None]]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(None)


async def ring(fut: asyncio.Future[None], timeout: float | None) -> None:
    """Await ``fut``, or at most ``timeout`` seconds (``None``: no limit): a timer resolves it
    then. The caller still drops its waiter afterwards."""
    if timeout is None:
        await fut
        return
    timer = asyncio.get_running_loop().call_later(timeout, resolve, (fut,))
    try:
        await fut
    finally:
        timer.cancel()
