"""Live queries over the arrwDB WebSocket protocol: ``watch``/``unwatch``, watch events on the
socket, following a REST watch after a disconnect, errors that keep the socket open, and the
order of watch events and change events on one socket."""

from __future__ import annotations

import random
import re
from typing import Any

import anyio
import httpx
import pytest
from watch_helpers import (
    DIM,
    KEEP,
    QUERY,
    K,
    Workload,
    add,
    assert_as_uninterrupted,
    assert_no_loss_or_repeat,
    entered,
    exact_top_k,
    key,
    new_library,
    open_socket,
    random_vector,
    rebuild,
    same_results,
)

from arrwdb.server import BackgroundServer

pytestmark = pytest.mark.anyio
WATCH = {"query_vector": QUERY, "k": K, "filter": KEEP}


async def test_watch_and_unwatch(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        lib = await new_library(http)
        near = await add(http, lib, [[1.0, 0.5] + [0.0] * (DIM - 2)])
        socket = await open_socket(server, lib)
        answer = await socket.answer("watch", {"query_vector": QUERY, "k": 1})
        assert answer["success"] is True, answer
        assert set(answer["data"]) == {"watch_id"}
        watch_id = answer["data"]["watch_id"]
        ready = await socket.wait(lambda m: m.get("event_type") == "watch.ready")
        assert socket.messages.index(answer) < socket.messages.index(ready)  # the answer first
        assert set(ready) == {
            "type",
            "event_type",
            "library_id",
            "watch_id",
            "id",
            "data",
            "timestamp",
        }
        assert (ready["type"], ready["library_id"], ready["watch_id"]) == ("event", lib, watch_id)
        assert [h["document_id"] for h in ready["data"]["results"]] == [near["id"]]
        listed = (await http.get(f"/v1/libraries/{lib}/watches")).json()["watches"]
        assert [w["id"] for w in listed] == [watch_id]
        best = await add(http, lib, [QUERY])
        event = await socket.wait(lambda m: m.get("event_type") == "watch.entered")
        assert (event["data"]["document_id"], event["data"]["rank"]) == (best["id"], 0)
        left = await socket.wait(lambda m: m.get("event_type") == "watch.left")
        assert left["data"]["reason"] == "outranked"
        metrics = (await http.get("/metrics")).text
        assert f'arrwdb_watches{{library_id="{lib}"}} 1.0' in metrics
        delivered = re.search(
            r'arrwdb_watch_events_delivered_total\{transport="websocket"\} ([0-9.]+)', metrics
        )
        assert delivered is not None
        assert float(delivered.group(1)) >= 3
        gone = await socket.answer("unwatch", {"watch_id": watch_id})
        assert gone["data"] == {"watch_id": watch_id, "unwatched": True}
        assert (await http.get(f"/v1/libraries/{lib}/watches")).json() == {"watches": []}
        before = len(socket.watch_events(watch_id))
        late = await add(http, lib, [QUERY])  # its change event comes; no watch event
        await socket.wait(lambda m: m.get("data", {}).get("document_id") == late["id"])
        assert len(socket.watch_events(watch_id)) == before
        # a watch of the socket ends with it
        again = await socket.answer("watch", WATCH)
        assert again["success"] is True
        await socket.ws.close()
        with anyio.fail_after(5):
            listed = [watch_id]
            while listed:
                await anyio.sleep(0.02)
                listed = (await http.get(f"/v1/libraries/{lib}/watches")).json()["watches"]


async def test_rebuilt_set_equals_search(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        lib = await new_library(http)
        work = Workload(http, lib, seed=11)
        await work.run(15)
        socket = await open_socket(server, lib)
        watch_id = (await socket.answer("watch", WATCH))["data"]["watch_id"]
        await work.run(80)
        sentinel = await work.sentinel()
        await socket.wait(entered(watch_id, sentinel))
        rebuilt = rebuild(socket.watch_events(watch_id))
        assert_no_loss_or_repeat(rebuilt.ids)
        assert len(rebuilt.ids) > 10
        assert same_results(rebuilt.members, await exact_top_k(http, lib)), rebuilt.ids
        await socket.ws.close()


async def test_following_a_rest_watch_resumes_after_a_disconnect(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        lib = await new_library(http)
        work = Workload(http, lib, seed=5)
        await work.run(10)
        made = await http.post(f"/v1/libraries/{lib}/watches", json=WATCH)
        watch_id = made.json()["id"]
        # a follower that stays connected all along: what the one cut off must end up with
        control = await open_socket(server, lib)
        assert (await control.answer("watch", {"watch_id": watch_id}))["success"] is True
        first = await open_socket(server, lib)
        answer = await first.answer("watch", {"watch_id": watch_id})
        assert answer["data"] == {"watch_id": watch_id}
        await work.run(30)
        sentinel = await work.sentinel()
        await first.wait(entered(watch_id, sentinel))
        events = first.watch_events(watch_id)
        # the client saw about half before it lost the connection, cut between two events of
        # one change
        heads = [key(e["id"])[0] for e in events]
        cut = next(i for i in range(len(events) // 2, len(events)) if heads[i] == heads[i - 1])
        rebuilt = rebuild(events[:cut])
        await first.ws.close()
        await work.run(30)  # while it is away
        second = await open_socket(server, lib)
        resumed = await second.answer("watch", {"watch_id": watch_id, "since": rebuilt.ids[-1]})
        assert resumed["success"] is True, resumed
        sentinel = await work.sentinel()
        await second.wait(entered(watch_id, sentinel))
        rebuild(second.watch_events(watch_id), rebuilt)
        await control.wait(entered(watch_id, sentinel))
        # no gap, no repeat: what the uninterrupted follower got, the first events included
        assert_as_uninterrupted(rebuilt, rebuild(control.watch_events(watch_id)))
        assert rebuilt.ids[cut - 1 : len(events)] == [e["id"] for e in events[cut - 1 :]]
        assert len(rebuilt.ids) > 20
        assert same_results(rebuilt.members, await exact_top_k(http, lib))
        # unwatch only detaches: the REST watch goes on
        detached = await second.answer("unwatch", {"watch_id": watch_id})
        assert detached["data"] == {"watch_id": watch_id, "unwatched": True}
        assert (await http.get(f"/v1/libraries/{lib}/watches/{watch_id}")).status_code == 200
        # deleted over REST while followed: the socket is told
        third = await open_socket(server, lib)
        await third.answer("watch", {"watch_id": watch_id})
        assert (await http.delete(f"/v1/libraries/{lib}/watches/{watch_id}")).status_code == 204
        closed = await third.wait(lambda m: m.get("event_type") == "stream.closed")
        assert (closed["watch_id"], closed["data"]["reason"]) == (watch_id, "watch_deleted")
        for socket in (control, second, third):
            await socket.ws.close()


async def test_errors_keep_the_socket_open_and_register_nothing(make_server: Any) -> None:
    live = make_server(max_watches_per_key=2)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        lib = await new_library(http)
        await add(http, lib, [QUERY])
        rest = (await http.post(f"/v1/libraries/{lib}/watches", json=WATCH)).json()["id"]
        socket = await open_socket(live, lib)
        vector = {"query_vector": QUERY}
        cases: list[tuple[Any, str, str | None]] = [
            (vector | {"k": 0}, "invalid_argument", "data.k"),
            (vector | {"k": 1001}, "invalid_argument", "data.k"),
            (vector | {"threshold": "x"}, "invalid_argument", "data.threshold"),
            (vector, "invalid_argument", "k"),
            ({"k": 3}, "invalid_argument", "query_text"),
            ({"query_vector": [1.0], "k": 3}, "dimension_mismatch", None),
            (vector | {"k": 3, "filter": {"n": {"$near": 1}}}, "invalid_filter", None),
            ({"watch_id": "nope"}, "not_found", None),
            ({"watch_id": rest, "since": "x"}, "invalid_argument", "since"),
            (vector | {"k": 3, "since": "4"}, "invalid_argument", "since"),
            (vector | {"k": 3, "watch_id": rest}, "invalid_argument", "watch_id"),
        ]
        for data, code, field in cases:
            answer = await socket.answer("watch", data)
            assert (answer["success"], answer["code"]) == (False, code), (data, answer)
            assert answer.get("field") == field or field is None, (data, answer)
        missing = await socket.answer("unwatch", {"watch_id": "nope"})
        assert missing["code"] == "not_found"
        assert (await socket.answer("unwatch", {}))["code"] == "invalid_argument"
        listed = (await http.get(f"/v1/libraries/{lib}/watches")).json()["watches"]
        assert [w["id"] for w in listed] == [rest]  # nothing registered
        # the per-key limit counts REST and WebSocket watches together
        assert (await socket.answer("watch", WATCH))["success"] is True
        over = await socket.answer("watch", WATCH)
        assert (over["success"], over["code"]) == (False, "limit_exceeded")
        assert "max_watches_per_key" in over["error"]
        following = await socket.answer("watch", {"watch_id": rest})  # following is no new watch
        assert following["success"] is True
        twice = await socket.answer("watch", {"watch_id": rest})
        assert twice["code"] == "already_exists"
        searched = await socket.answer("search", {"query_vector": QUERY, "k": 1})
        assert searched["success"] is True  # and the socket is still open
        await socket.ws.close()


@pytest.mark.parametrize("queue", [None, 8], ids=["default queue", "queue of 8 frames"])
async def test_change_event_n_comes_after_every_watch_event_it_caused(
    server: BackgroundServer, make_server: Any, queue: int | None
) -> None:
    # with a small outbound queue the socket's events wait for room most of the time
    if queue is not None:
        server = make_server(ws_send_queue=queue)
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        lib = await new_library(http)
        work = Workload(http, lib, seed=3)
        await work.run(10)
        socket = await open_socket(server, lib)
        watches = [
            (await socket.answer("watch", body))["data"]["watch_id"]
            for body in (
                WATCH,
                {"query_vector": QUERY, "k": 2},
                {"query_vector": [0.0, 1.0] + [0.0] * (DIM - 2), "k": 3, "threshold": 0.0},
                {"query_vector": QUERY, "threshold": 0.3},
            )
        ]
        rng = random.Random(9)
        # writes pipelined on the socket and, at the same time, over REST
        rids = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(work.run, 100)
            for _ in range(100):
                vectors = [{"text": "w", "embedding": random_vector(rng)}]
                body = {"title": "w", "chunks": vectors, "metadata": {"keep": True}}
                rids.append(await socket.send("add", body))
        for rid in rids:
            await socket.wait(lambda m, rid=rid: m.get("request_id") == rid)
        last = await add(http, lib, [QUERY])
        await socket.wait(
            lambda m: m["type"] == "event" and m["data"].get("document_id") == last["id"]
        )
        kinds = ("watch.entered", "watch.left", "watch.match")
        caused = [m for m in socket.messages if m.get("event_type") in kinds]
        changes = [
            (i, m)
            for i, m in enumerate(socket.messages)
            if m.get("event_type", "").startswith("document.")
        ]
        assert len(caused) > 100
        assert len(changes) > 150  # (a patch that changes nothing has no event)
        position = {id(m): i for i, m in enumerate(socket.messages)}
        for i, change in changes:
            n = int(change["id"])
            late = [m for m in caused if int(m["data"]["event_id"]) <= n and position[id(m)] > i]
            assert not late, (change, late[:3])
        for watch_id in watches:
            assert_no_loss_or_repeat([m["id"] for m in socket.watch_events(watch_id)])
        await socket.ws.close()
