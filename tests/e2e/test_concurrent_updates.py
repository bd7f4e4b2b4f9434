"""Concurrent writes to one document never lose an acknowledged one, over a real server."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
from httpx_sse import connect_sse

from arrwdb.server import BackgroundServer
from conftest import add_text, create_library

TRIALS = 40


def _patch(
    base: str,
    url: str,
    barrier: threading.Barrier,
    statuses: dict[str, int],
    kind: str,
    body: dict[str, Any],
) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        barrier.wait()
        statuses[kind] = client.patch(url, json=body).status_code


def test_a_title_patch_and_a_text_patch_at_once_both_hold(
    server: BackgroundServer, http: httpx.Client
) -> None:
    """Before: a PATCH of the title answered 200 was undone, in about half of the trials, by a
    concurrent PATCH of the text (which had read the old title before it was ordered)."""
    lib = create_library(http, index="flat")["id"]
    doc = add_text(http, lib, "title 0", "text zero")["id"]
    url = f"/v1/libraries/{lib}/documents/{doc}"
    acknowledged = 0
    for trial in range(1, TRIALS + 1):
        barrier = threading.Barrier(2)
        statuses: dict[str, int] = {}
        # a long text: chunking and embedding it takes a while, as real content does
        text = f"text {trial} " + "many words in a long text. " * 2_000
        bodies = {"title": {"title": f"title {trial}"}, "text": {"text": text}}

        threads = [
            threading.Thread(target=_patch, args=(server.url, url, barrier, statuses, *item))
            for item in bodies.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert statuses == {"title": 200, "text": 200}
        acknowledged += 2
        got = http.get(url).json()
        assert got["title"] == f"title {trial}", f"trial {trial}: the title was undone"
        assert got["chunks"][0]["text"].startswith(f"text {trial} "), f"trial {trial}"

    # every acknowledged write has exactly one event
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=5)) as client,
        connect_sse(client, "GET", f"/v1/libraries/{lib}/events?since=earliest") as source,
    ):
        for sse in source.iter_sse():
            events.append(json.loads(sse.data))
            if len(events) == 2 + acknowledged:
                break
    assert [e["type"] for e in events] == [
        "library.created",
        "document.added",
        *["document.updated"] * acknowledged,
    ]
    assert {e["data"]["document_id"] for e in events[1:]} == {doc}
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids))
