"""``arrwdb tail``: change events, printed one line each as they arrive. The client's stream
reconnects by itself after a lost connection and resumes after the last event it gave, so the
output has every event once, in order; a note on stderr tells of the lost connection."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.text import Text

from arrwdb.cli_data._common import OK, Session, get_library
from arrwdb.domain.events import Event

#: On a local store, the stream ends after this long without an event (nothing else can
#: write to the store while this process has it open).
LOCAL_QUIET = 0.5
#: How often the reconnection counter of the stream is looked at.
WATCH_EVERY = 0.1
#: The longest a value of the data summary is shown.
VALUE_WIDTH = 60


def main(args: argparse.Namespace, session: Session) -> int:
    try:
        return _tail(args, session)
    except KeyboardInterrupt:
        return OK  # Ctrl-C is how a tail ends


def _tail(args: argparse.Namespace, session: Session) -> int:
    target = session.open()
    names: dict[str, str] = {}
    source: Any
    if args.library:
        source = get_library(target, args.library, session)
        names[source.id] = source.info.name
    else:
        source = target.db
        names.update({lib.id: lib.name for lib in target.db.list_libraries()})
    stream = source.events(
        since=args.since, types=args.types, timeout=LOCAL_QUIET if target.local else None
    )
    watch = None if target.local else Reconnections(stream, session.where)
    try:
        for event in stream:
            if watch is not None:
                watch.arrived()
            if event.library_id and isinstance(event.data.get("name"), str):
                names[event.library_id] = event.data["name"]
            print(_json(event) if args.json else line(event, names), flush=True)
    finally:
        if watch is not None:
            watch.stop()
        stream.close()
    return OK


def _json(event: Event) -> str:
    return json.dumps(event.envelope(), ensure_ascii=False, default=str)


def line(event: Event, names: Mapping[str, str]) -> str:
    """``id  type  library  key=value ...``."""
    library = names.get(event.library_id, event.library_id) if event.library_id else "-"
    return f"{event.id:>6}  {event.type:<16}  {library}  {summarize(event.data)}".rstrip()


def summarize(data: Mapping[str, Any]) -> str:
    parts = []
    for key, value in data.items():
        if value is None:
            continue
        text = value if isinstance(value, str) and _bare(value) else json.dumps(value)
        if len(text) > VALUE_WIDTH:
            text = text[: VALUE_WIDTH - 1] + "…"
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _bare(value: str) -> bool:
    return bool(value) and not any(c.isspace() or c in "\"'=" for c in value)


class Reconnections:
    """Watches the stream's count of reconnections: tells (on stderr) when the connection is
    lost, and when events arrive again after a reconnection."""

    def __init__(self, stream: Any, where: str) -> None:
        self._stream = stream
        self._where = where
        self._seen: int = stream.reconnects
        self._lost = False
        self._last_id: str | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._console = Console(stderr=True, highlight=False)
        self._thread = threading.Thread(target=self._watch, name="arrwdb-tail", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(WATCH_EVERY):
            with self._lock:
                if not self._lost and self._stream.reconnects != self._seen:
                    self._lost = True
                    after = f" after event {self._last_id}" if self._last_id else ""
                    self._note(f"lost the connection to {self._where}; reconnecting{after}")

    def arrived(self) -> None:
        """An event came (the stream's ``last_id``)."""
        with self._lock:
            if self._stream.reconnects != self._seen:
                after = f" after event {self._last_id}" if self._last_id else ""
                if self._lost:
                    self._note(f"reconnected to {self._where}: resumed{after}")
                else:  # lost and found again between two looks of the watch
                    self._note(f"lost the connection to {self._where}, reconnected: resumed{after}")
                self._lost = False
                self._seen = self._stream.reconnects
            self._last_id = self._stream.last_id

    def _note(self, message: str) -> None:
        self._console.print(Text(f"arrwdb tail: {message}", style="dim"), soft_wrap=True)

    def stop(self) -> None:
        self._stopped.set()
