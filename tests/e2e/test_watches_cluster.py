"""Stored watches on several servers over one PostgreSQL dataset: a watch made on one server is
seen and deleted on another; its stream, read on one server through writes made on both, cut in
the middle of one change's events and resumed on the other (SSE, ``Last-Event-ID``), then cut
again and resumed on the first (WebSocket, ``since``), has every event exactly once, in
change-stream order, and what the client rebuilds is an exact search on either server; a resume
point from before a server had the watch is a ``stream.reset`` there, never a gap.

The servers are real (``cluster``: each a whole arrwDB on its own loopback port), the clients
real httpx and websockets ones; a listener that stays connected on the first server all along
shows what an uninterrupted client gets."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import pytest
from watch_helpers import (
    DIM,
    KEEP,
    QUERY,
    Events,
    K,
    Rebuilt,
    Workload,
    assert_as_uninterrupted,
    entered,
    exact_top_k,
    key,
    new_library,
    open_socket,
    rebuild,
    same_results,
    score,
    sse,
)

from conftest import Node

pytestmark = pytest.mark.anyio
THRESHOLD = 0.3
TOP = {"query_vector": QUERY, "k": K, "filter": KEEP}
MATCH = {"query_vector": QUERY, "threshold": THRESHOLD, "filter": KEEP}
#: the longest one wait for events may take (a loaded machine is slow, not wrong)
WAIT = 20.0

Until = Callable[[str, dict[str, Any]], bool]


async def read(events: Events, rebuilt: Rebuilt, until: Until) -> None:
    """Read and apply events until one satisfies ``until``."""
    with anyio.fail_after(WAIT):
        while True:
            event = await events.next(timeout=WAIT)
            data = json.loads(event.data)["data"]
            rebuilt.apply(event.event, data, event.id)
            if until(event.event, data):
                return


def has_entered(chunk_id: str) -> Until:
    return lambda kind, data: kind == "watch.entered" and data["chunk_id"] == chunk_id


def has_matched(chunk_id: str) -> Until:
    return lambda kind, data: kind == "watch.match" and data["chunk_id"] == chunk_id


def first_of(kind: str, event_id: int) -> Until:
    return lambda k, data: k == kind and data.get("event_id") == str(event_id)


def matched(watch_id: str, chunk_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: (
        m.get("watch_id") == watch_id
        and m["event_type"] == "watch.match"
        and m["data"]["chunk_id"] == chunk_id
    )


def last_id(rebuilt: Rebuilt) -> str:
    return rebuilt.events[-1][0]


def assert_in_change_order(rebuilt: Rebuilt, writes: set[int]) -> None:
    """Each event names the change that caused it (its id's head), one of the writes made
    after the ``watch.ready``, and the changes come in the change stream's order."""
    (ready_id, _, ready), *caused = rebuilt.events
    at = int(ready["event_id"])
    assert ready_id == str(at)
    heads = [key(event_id)[0] for event_id, _, _ in caused]
    for (event_id, _, data), head in zip(caused, heads, strict=True):
        assert data["event_id"] == str(head), event_id
        assert head in writes, event_id
    assert heads == sorted(heads), heads
    assert all(h > at for h in heads), (at, heads)


async def test_a_watch_made_on_one_server_resumes_on_the_other(
    cluster: Callable[..., Node],
) -> None:
    a, b = cluster(), cluster()
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=WAIT) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=WAIT) as on_b,
    ):
        lib = await new_library(on_a)
        work = Workload(on_a, lib, seed=23)
        await work.run(15, on_a)
        await work.run(10, on_b)
        # both servers have applied every write so far (a read naming the last one waits)
        for http in (on_a, on_b):
            r = await http.get(f"/v1/libraries/{lib}", params={"min_event_id": work.last})
            assert r.status_code == 200, r.text
        base = f"/v1/libraries/{lib}/watches"
        made = []
        for body in (TOP, MATCH):
            r = await on_a.post(base, json=body)
            assert r.status_code == 201, r.text
            made.append(r.json())
        top, match = made
        for watch in made:  # seen on the other server at once
            r = await on_b.get(f"{base}/{watch['id']}")
            assert (r.status_code, r.json()) == (200, watch)
        listed = (await on_b.get(base)).json()["watches"]
        assert sorted(w["id"] for w in listed) == sorted([top["id"], match["id"]])
        top_url, match_url = (f"{base}/{w['id']}/events" for w in made)
        client_top, client_match = Rebuilt(), Rebuilt()
        control_top, control_match = Rebuilt(), Rebuilt()
        async with AsyncExitStack() as controls:
            # the uninterrupted listeners, on the first server from start to end
            ctl_top, _ = await controls.enter_async_context(sse(on_a, top_url))
            ctl_match, _ = await controls.enter_async_context(sse(on_a, match_url))

            # 1. SSE on the first server, through writes made on both
            async with (
                sse(on_a, top_url) as (events_top, _),
                sse(on_a, match_url) as (events_match, _),
            ):
                for http in (on_a, on_b, on_a, on_b):
                    await work.run(12, http)
                sentinel = await work.sentinel(on_b)
                await read(events_top, client_top, has_entered(sentinel))
                await read(events_match, client_match, has_matched(sentinel))
                # one change causing several events of each watch: two chunks that both enter
                # (each pushing one out) and both match; the client reads only the first few
                near = [[1.0, 0.02] + [0.0] * (DIM - 2), [1.0, 0.04] + [0.0] * (DIM - 2)]
                await work.put(near, keep=True, http=on_b)
                cut = work.last
                await read(events_top, client_top, first_of("watch.entered", cut))
                await read(events_match, client_match, first_of("watch.match", cut))
            assert last_id(client_top) == f"{cut}.1"  # left, entered; not yet left, entered
            assert last_id(client_match) == f"{cut}.0"  # not yet the second chunk's match

            # 2. while the client is away, writes on the other server; it resumes there
            await work.run(30, on_b)
            sentinel = await work.sentinel(on_b)
            async with (
                sse(on_b, top_url, headers={"Last-Event-ID": last_id(client_top)}) as (
                    resumed_top,
                    _,
                ),
                sse(on_b, match_url, headers={"Last-Event-ID": last_id(client_match)}) as (
                    resumed_match,
                    _,
                ),
            ):
                await read(resumed_top, client_top, has_entered(sentinel))
                await read(resumed_match, client_match, has_matched(sentinel))

            # 3. away again, writes on both; it follows the watches on the first server over
            # WebSocket from where it was
            await work.run(10, on_b)
            await work.run(10, on_a)
            sentinel = await work.sentinel(on_a)
            socket = await open_socket(a.server, lib)
            for watch, rebuilt in ((top, client_top), (match, client_match)):
                since = {"watch_id": watch["id"], "since": last_id(rebuilt)}
                answer = await socket.answer("watch", since)
                assert answer["success"] is True, answer
            await socket.wait(entered(top["id"], sentinel), timeout=WAIT)
            await socket.wait(matched(match["id"], sentinel), timeout=WAIT)
            await socket.ws.close()
            rebuild(socket.watch_events(top["id"]), client_top)
            rebuild(socket.watch_events(match["id"]), client_match)

            await read(ctl_top, control_top, has_entered(sentinel))
            await read(ctl_match, control_match, has_matched(sentinel))
            # no gap, no repeat, in change-stream order, across the three connections
            assert len(client_top.ids) > 30
            assert_as_uninterrupted(client_top, control_top)
            assert_as_uninterrupted(client_match, control_match)
            writes = set(work.writes)
            assert_in_change_order(client_top, writes)
            assert_in_change_order(client_match, writes)
            # the rebuilt results are an exact search on either server
            for http in (on_a, on_b):
                exact = await exact_top_k(http, lib, after=work.last)
                assert same_results(client_top.members, exact), client_top.ids
            # the matches are exactly the chunks saved since the watch's start that reach the
            # threshold and pass the filter
            start = int(client_match.ids[0])
            assert (
                not [  # none so near the threshold that float32 could tip it
                    v for s in work.saves for v in s.vectors if abs(score(v) - THRESHOLD) < 1e-4
                ]
            )
            expected = sorted(
                (s.event_id, s.document_id, score(v))
                for s in work.saves
                if s.event_id > start and s.keep
                for v in s.vectors
                if score(v) >= THRESHOLD
            )
            received = sorted(
                (int(data["event_id"]), data["document_id"], data["score"])
                for _, _, data in client_match.events[1:]
            )
            assert len(received) > 10
            assert [(n, d) for n, d, _ in received] == [(n, d) for n, d, _ in expected]
            assert [s for _, _, s in received] == pytest.approx([s for _, _, s in expected])

            # 4. deleted on the second server, it ends on the first: its stream closes there
            assert (await on_b.delete(f"{base}/{top['id']}")).status_code == 204
            with anyio.fail_after(WAIT):
                while (closed := await ctl_top.next(timeout=WAIT)).event != "stream.closed":
                    pass
            assert json.loads(closed.data)["data"]["reason"] == "watch_deleted"
            for http in (on_a, on_b):
                assert (await http.get(f"{base}/{top['id']}")).status_code == 404
                listed = (await http.get(base)).json()["watches"]
                assert [w["id"] for w in listed] == [match["id"]]


async def test_a_resume_point_from_before_a_server_had_the_watch_is_a_reset_there(
    cluster: Callable[..., Node],
) -> None:
    a = cluster()
    async with httpx.AsyncClient(base_url=a.url, timeout=WAIT) as on_a:
        lib = await new_library(on_a)
        work = Workload(on_a, lib, seed=29)
        await work.run(10)
        r = await on_a.post(f"/v1/libraries/{lib}/watches", json=TOP)
        assert r.status_code == 201, r.text
        url = f"/v1/libraries/{lib}/watches/{r.json()['id']}/events"
        rebuilt = Rebuilt()
        async with sse(on_a, url) as (events, _):
            await work.run(20)
            sentinel = await work.sentinel()
            await read(events, rebuilt, has_entered(sentinel))
        held = last_id(rebuilt)
        assert key(held) < (work.last, 2**62)  # within the last change: ``N.j``
        # a server started now starts the stored watch at the last change: it holds no events
        # of that change, so it cannot know the client saw them all
        c = cluster()
        async with (
            httpx.AsyncClient(base_url=c.url, timeout=WAIT) as on_c,
            sse(on_c, url, headers={"Last-Event-ID": held}) as (events, _),
        ):
            reset = await events.next(timeout=WAIT)
            data = json.loads(reset.data)["data"]
            assert (reset.event, data["reason"], data["requested"]) == (
                "stream.reset",
                "history_lost",
                held,
            )
            ready = await events.next(timeout=WAIT)
            assert ready.event == "watch.ready"
            assert ready.id == reset.id == data["resume_from"] == str(work.last)
            rebuilt.apply(ready.event, json.loads(ready.data)["data"], ready.id)
            assert same_results(rebuilt.members, await exact_top_k(on_c, lib, after=work.last))
            # and from the fresh results on, the stream is exact again
            await work.run(20, on_c)
            sentinel = await work.sentinel(on_c)
            await read(events, rebuilt, has_entered(sentinel))
            assert same_results(rebuilt.members, await exact_top_k(on_a, lib, after=work.last))
