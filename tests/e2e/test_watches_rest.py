"""Live queries over REST: the watch routes and the SSE stream of a watch's events, against a
real server."""

from __future__ import annotations

import json
import uuid
from typing import Any

import anyio
import httpx
import pytest
from watch_helpers import (
    DIM,
    KEEP,
    QUERY,
    K,
    Rebuilt,
    Workload,
    add,
    assert_as_uninterrupted,
    assert_no_loss_or_repeat,
    exact_top_k,
    key,
    new_library,
    same_results,
    sse,
)

from arrwdb.server import BackgroundServer
from conftest import assert_problem

pytestmark = pytest.mark.anyio
WATCH = {"query_vector": QUERY, "k": K, "filter": KEEP}


async def make_watch(http: httpx.AsyncClient, lib: str, body: Any = None) -> dict[str, Any]:
    r = await http.post(f"/v1/libraries/{lib}/watches", json=WATCH if body is None else body)
    assert r.status_code == 201, r.text
    watch: dict[str, Any] = r.json()
    return watch


async def test_watches_are_made_read_listed_and_deleted(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        lib = await new_library(http)
        top = await make_watch(http, lib)
        assert set(top) == {"id", "library_id", "k", "threshold", "filter", "created_at"}
        assert (top["library_id"], top["k"], top["threshold"], top["filter"]) == (
            lib,
            K,
            None,
            KEEP,
        )
        assert top["created_at"].endswith("Z")
        match = await make_watch(http, lib, {"query_vector": QUERY, "threshold": 0.5})
        assert (match["k"], match["threshold"], match["filter"]) == (None, 0.5, None)
        base = f"/v1/libraries/{lib}/watches"
        assert (await http.get(f"{base}/{top['id']}")).json() == top
        listed = (await http.get(base)).json()
        assert sorted(w["id"] for w in listed["watches"]) == sorted([top["id"], match["id"]])
        deleted = await http.delete(f"{base}/{top['id']}")
        assert deleted.status_code == 204
        assert not deleted.content
        assert_problem(await http.get(f"{base}/{top['id']}"), 404, "not_found")
        assert_problem(await http.delete(f"{base}/{top['id']}"), 404, "not_found")
        assert [w["id"] for w in (await http.get(base)).json()["watches"]] == [match["id"]]


async def test_refused_watches_name_the_field_and_register_nothing(
    server: BackgroundServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        lib = await new_library(http)
        await add(http, lib, [QUERY])
        other = str(uuid.uuid4())
        base = f"/v1/libraries/{lib}/watches"
        vector = {"query_vector": QUERY}
        cases: list[tuple[Any, str, str | None]] = [
            (vector | {"k": 0}, "invalid_argument", "k"),
            (vector | {"k": 1001}, "invalid_argument", "k"),
            (vector | {"k": "ten"}, "invalid_argument", "k"),
            (vector | {"threshold": "x"}, "invalid_argument", "threshold"),
            (vector | {"threshold": "NaN"}, "invalid_argument", "threshold"),
            (vector, "invalid_argument", "k"),  # neither k nor threshold
            (vector | {"query_text": "q", "k": 3}, "invalid_argument", "query_text"),
            ({"k": 3}, "invalid_argument", "query_text"),
            ({"query_vector": [1.0, 0.0], "k": 3}, "dimension_mismatch", None),
            ({"query_vector": "up", "k": 3}, "invalid_vector", "query_vector"),
            ({"query_vector": [0.0] * DIM, "k": 3}, "invalid_vector", "query_vector"),
            (vector | {"k": 3, "filter": {"n": {"$near": 1}}}, "invalid_filter", None),
            (vector | {"k": 3, "filter": [1]}, "invalid_filter", "filter"),
            ({"query_text": "words", "k": 3}, "embedder_required", "query_text"),
        ]
        for body, code, field in cases:
            problem = assert_problem(await http.post(base, json=body), 422, code)
            if field is not None:
                assert problem["field"] == field, (body, problem)
            if "threshold" not in body and "k" in body:  # a search of the same body: same code
                searched = await http.post(f"/v1/libraries/{lib}/search", json=body)
                assert searched.json()["code"] == code, (body, searched.text)
        # a number that does not fit a float is refused as the search refuses it
        raw = b'{"query_vector": [1e999, 0, 0, 0, 0, 0, 0, 0], "k": 3}'
        headers = {"Content-Type": "application/json"}
        answers = [
            (await http.post(f"/v1/libraries/{lib}{path}", content=raw, headers=headers)).json()
            for path in ("/watches", "/search")
        ]
        assert (answers[0]["status"], answers[0]["code"]) == (422, "invalid_vector")
        assert (answers[0]["code"], answers[0].get("field")) == (
            answers[1]["code"],
            answers[1].get("field"),
        )
        r = await http.post(
            base, content=b'{"query_vector": [1], "threshold": 1e999}', headers=headers
        )
        assert assert_problem(r, 422, "invalid_argument")["field"] == "threshold"
        assert_problem(
            await http.post(base, content=b"{not json", headers=headers), 400, "bad_request"
        )
        assert (await http.get(base)).json() == {"watches": []}  # nothing registered
        # unknown library or watch: 404 on every route
        for method, path in [
            ("POST", f"/v1/libraries/{other}/watches"),
            ("GET", f"/v1/libraries/{other}/watches"),
            ("GET", f"/v1/libraries/{other}/watches/{other}"),
            ("DELETE", f"/v1/libraries/{other}/watches/{other}"),
            ("GET", f"/v1/libraries/{other}/watches/{other}/events"),
            ("GET", f"{base}/{other}"),
            ("DELETE", f"{base}/{other}"),
            ("GET", f"{base}/{other}/events"),
        ]:
            r = await http.request(method, path, json=WATCH if method == "POST" else None)
            assert_problem(r, 404, "not_found")


async def test_limits_per_library_and_per_key(make_server: Any) -> None:
    live = make_server(max_watches_per_library=2, max_watches_per_key=3)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        a, b = await new_library(http), await new_library(http)
        first = await make_watch(http, a)
        await make_watch(http, a)
        problem = assert_problem(
            await http.post(f"/v1/libraries/{a}/watches", json=WATCH), 422, "limit_exceeded"
        )
        assert "max_watches_per_library" in problem["detail"]
        await make_watch(http, b)
        problem = assert_problem(
            await http.post(f"/v1/libraries/{b}/watches", json=WATCH), 422, "limit_exceeded"
        )
        assert "max_watches_per_key" in problem["detail"]
        assert len((await http.get(f"/v1/libraries/{b}/watches")).json()["watches"]) == 1
        assert (await http.delete(f"/v1/libraries/{a}/watches/{first['id']}")).status_code == 204
        await make_watch(http, b)  # room again
        c = await new_library(http)
        problem = assert_problem(
            await http.post(f"/v1/libraries/{c}/watches", json=WATCH), 422, "limit_exceeded"
        )
        assert "max_watches_per_key" in problem["detail"]
        await http.delete(f"/v1/libraries/{a}")  # its watch ends: the key has room again
        await make_watch(http, c)
        assert len((await http.get(f"/v1/libraries/{b}/watches")).json()["watches"]) == 2


async def test_events_ready_entered_left_match_and_closed(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        lib = await new_library(http)
        near = await add(http, lib, [[1.0, 0.5] + [0.0] * (DIM - 2)])
        top = await make_watch(http, lib, {"query_vector": QUERY, "k": 1, "filter": KEEP})
        match = await make_watch(http, lib, {"query_vector": QUERY, "threshold": 0.99})
        base = f"/v1/libraries/{lib}/watches"
        async with (
            sse(http, f"{base}/{top['id']}/events") as (events, response),
            sse(http, f"{base}/{match['id']}/events") as (matches, _),
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            ready = await events.next()
            envelope = json.loads(ready.data)
            assert (ready.event, ready.id) == ("watch.ready", envelope["id"])
            assert set(envelope) == {"id", "type", "library_id", "watch_id", "timestamp", "data"}
            assert (envelope["library_id"], envelope["watch_id"]) == (lib, top["id"])
            assert [h["document_id"] for h in envelope["data"]["results"]] == [near["id"]]
            assert envelope["data"]["event_id"] == ready.id
            assert json.loads((await matches.next()).data)["data"]["results"] == []
            best = await add(http, lib, [QUERY])
            left, entered = await events.next(), await events.next()
            assert (left.event, entered.event) == ("watch.left", "watch.entered")
            left_data = json.loads(left.data)["data"]
            assert (left_data["document_id"], left_data["reason"], left_data["rank"]) == (
                near["id"],
                "outranked",
                0,
            )
            entered_data = json.loads(entered.data)["data"]
            assert (entered_data["document_id"], entered_data["rank"]) == (best["id"], 0)
            assert entered_data["score"] == pytest.approx(1.0)
            assert left_data["event_id"] == entered_data["event_id"]
            assert (left.id, entered.id) == (
                f"{left_data['event_id']}.0",
                f"{left_data['event_id']}.1",
            )
            matched = await matches.next()
            assert matched.event == "watch.match"
            assert json.loads(matched.data)["data"]["document_id"] == best["id"]
            # the filter fails: the chunk leaves, the next best comes back
            patch = await http.patch(
                f"/v1/libraries/{lib}/documents/{best['id']}", json={"metadata": {"keep": False}}
            )
            assert patch.status_code == 200
            gone = json.loads((await events.next()).data)["data"]
            assert (gone["document_id"], gone["reason"]) == (best["id"], "filtered")
            back = json.loads((await events.next()).data)["data"]
            assert back["document_id"] == near["id"]
            assert (await http.delete(f"{base}/{top['id']}")).status_code == 204
            closed = await events.next()
            assert closed.event == "stream.closed"
            data = json.loads(closed.data)["data"]
            assert data == {"reason": "watch_deleted", "last_id": f"{back['event_id']}.1"}
            await http.delete(f"/v1/libraries/{lib}")
            with anyio.fail_after(5):
                while (event := await matches.next()).event != "stream.closed":
                    pass
            assert json.loads(event.data)["data"]["reason"] == "library_deleted"


async def test_rebuilt_set_equals_search_across_a_resume(server: BackgroundServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        lib = await new_library(http)
        work = Workload(http, lib, seed=7)
        await work.run(15)
        watch = await make_watch(http, lib)
        url = f"/v1/libraries/{lib}/watches/{watch['id']}/events"
        rebuilt, control = Rebuilt(), Rebuilt()
        # a listener that stays connected all along: what the one cut off must end up with
        async with sse(http, url) as (uninterrupted, _):
            async with sse(http, url) as (events, _):
                await work.run(40)
                for _ in range(4):  # a few events, then the client goes away mid-stream
                    event = await events.next()
                    rebuilt.apply(event.event, json.loads(event.data)["data"], event.id)
            assert len(rebuilt.ids) == 4
            await work.run(40)  # while it is away
            sentinel = await work.sentinel()
            async with sse(http, url, headers={"Last-Event-ID": rebuilt.ids[-1]}) as (events, _):
                await events.until(rebuilt, sentinel)
                assert_no_loss_or_repeat(rebuilt.ids)
                assert same_results(rebuilt.members, await exact_top_k(http, lib)), rebuilt.ids
                await work.run(30)  # and live again
                sentinel = await work.sentinel()
                await events.until(rebuilt, sentinel)
            await uninterrupted.until(control, sentinel)
        # no gap, no repeat: what the uninterrupted listener got, from the same watch.ready
        assert_as_uninterrupted(rebuilt, control)
        # (the cut fell between two events of one change)
        assert key(control.ids[4])[0] == key(control.ids[3])[0], control.ids[:5]
        assert same_results(rebuilt.members, await exact_top_k(http, lib))
        assert len(rebuilt.ids) > 20
        # ?since= works as the header does: exactly the events after it
        middle = rebuilt.ids[len(rebuilt.ids) // 2]
        async with sse(http, url, params={"since": middle}) as (events, _):
            replay = [
                await events.next() for _ in range(len(rebuilt.ids) - len(rebuilt.ids) // 2 - 1)
            ]
        assert [e.id for e in replay] == rebuilt.ids[len(rebuilt.ids) // 2 + 1 :]


async def test_a_resume_point_no_longer_held_is_a_reset_then_ready(
    server: BackgroundServer,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        lib = await new_library(http)
        await add(http, lib, [QUERY])
        watch = await make_watch(http, lib)
        url = f"/v1/libraries/{lib}/watches/{watch['id']}/events"
        async with sse(http, url, headers={"Last-Event-ID": "1"}) as (events, _):
            reset, ready = await events.next(), await events.next()
        data = json.loads(reset.data)["data"]
        assert reset.event == "stream.reset"
        assert (data["reason"], data["requested"]) == ("history_lost", "1")
        assert ready.event == "watch.ready"
        assert reset.id == ready.id == data["resume_from"]
        assert len(json.loads(ready.data)["data"]["results"]) == 1
        bad = await http.get(url, params={"since": "x"})
        assert assert_problem(bad, 422, "invalid_argument")["field"] == "since"


async def test_revoking_a_key_closes_a_watch_stream_within_a_second(make_server: Any) -> None:
    admin_key = "admin-" + uuid.uuid4().hex
    live = make_server(api_key=admin_key)
    admin = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(base_url=live.url, timeout=10, headers=admin) as http:
        lib = await new_library(http)
        made = await http.post("/v1/keys", json={"name": "r", "libraries": [lib], "access": "read"})
        key = {"Authorization": f"Bearer {made.json()['key']}"}
        watch = (await http.post(f"/v1/libraries/{lib}/watches", json=WATCH, headers=key)).json()
        url = f"/v1/libraries/{lib}/watches/{watch['id']}/events"
        async with sse(http, url, headers=key) as (events, _):
            assert (await events.next()).event == "watch.ready"
            started = anyio.current_time()
            assert (await http.delete(f"/v1/keys/{made.json()['id']}")).status_code == 204
            closed = await events.next(timeout=1.0)
        assert anyio.current_time() - started < 1.0
        assert closed.event == "stream.closed"
        assert json.loads(closed.data)["data"]["reason"] == "unauthorized"


async def test_a_watch_stream_ends_with_stream_closed_at_shutdown(make_server: Any) -> None:
    live = make_server()
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        lib = await new_library(http)
        watch = await make_watch(http, lib)
        async with sse(http, f"/v1/libraries/{lib}/watches/{watch['id']}/events") as (events, _):
            ready = await events.next()
            await anyio.to_thread.run_sync(live.stop)
            closed = await events.next()
        assert closed.event == "stream.closed"
        assert json.loads(closed.data)["data"] == {"reason": "shutdown", "last_id": ready.id}
