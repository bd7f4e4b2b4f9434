"""uvicorn's HTTP protocol (httptools) with a header-read timeout: a connection whose request
headers have not all arrived ``header_timeout`` seconds after it opened (or after the first
byte of its next request) is closed, so that clients sending headers a byte at a time cannot
hold connections open for ever. (Idle keep-alive connections are closed by uvicorn itself.)"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("arrwdb.server")


class _HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        logger.info(
            "closing a connection from %s: no complete request headers after %g s",
            f"{self.client[0]}:{self.client[1]}" if self.client else "?",
            self.header_timeout,
        )
        self.transport.close()


def with_header_timeout(seconds: float) -> Any:
    """The protocol class for ``uvicorn.Config(http=...)``."""
    return type("HeaderTimeoutProtocol", (_HeaderTimeoutProtocol,), {"header_timeout": seconds})
