"""API keys and scopes on every transport, against a real server with an admin key.

The matrix test makes one key of each kind (read/write x one library, two libraries, every
library; revoked, missing, wrong) and tries every REST route, both SSE streams and every
WebSocket action with each: every access beyond the key's scope is refused with the status or
close code of the contract, and every access within it is let through.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import websockets
from httpx_sse import aconnect_sse

from arrwdb.server import BackgroundServer
from conftest import assert_problem, recv, request, start_server

ADMIN_KEY = "admin-" + uuid.uuid4().hex
DIM = 4
pytestmark = pytest.mark.anyio


def bearer(key: str | None) -> dict[str, str]:
    return {} if key is None else {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def secured() -> Iterator[BackgroundServer]:
    live = start_server(api_key=ADMIN_KEY)
    yield live
    live.stop()


@pytest.fixture
def admin(secured: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.url, headers=bearer(ADMIN_KEY), timeout=10) as client:
        yield client


def new_library(admin: httpx.Client) -> str:
    r = admin.post("/v1/libraries", json={"name": f"lib-{uuid.uuid4().hex[:10]}", "dimension": DIM})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def new_document(admin: httpx.Client, library_id: str) -> str:
    body = {"title": "d", "chunks": [{"text": "t", "embedding": [1.0, 0.0, 0.0, 0.0]}]}
    r = admin.post(f"/v1/libraries/{library_id}/documents", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def make_key(admin: httpx.Client, libraries: list[str], access: str) -> str:
    r = admin.post("/v1/keys", json={"name": "k", "libraries": libraries, "access": access})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


# -- keys -------------------------------------------------------------------------------------


def test_without_a_key_only_health_answers(secured: BackgroundServer) -> None:
    with httpx.Client(base_url=secured.url) as anon:
        assert anon.get("/v1/health").status_code == 200
        for path in ("/v1/libraries", "/v1/health/ready", "/v1/websockets/stats", "/v1/keys"):
            refused = anon.get(path)
            assert_problem(refused, 401, "unauthorized")
            assert refused.headers["www-authenticate"].startswith("Bearer")
        assert_problem(anon.get("/v1/libraries", headers=bearer("nope")), 401, "unauthorized")
        assert_problem(
            anon.get("/v1/libraries", headers={"Authorization": f"Basic {ADMIN_KEY}"}),
            401,
            "unauthorized",
        )
        # a key in the query is for SSE and WebSocket URLs only (browsers), not REST
        r = anon.get("/v1/libraries", params={"access_token": ADMIN_KEY})
        assert_problem(r, 401, "unauthorized")


def test_keys_are_made_listed_and_revoked(admin: httpx.Client) -> None:
    lib = new_library(admin)
    made = admin.post("/v1/keys", json={"name": "reader", "libraries": [lib], "access": "read"})
    assert made.status_code == 201
    body = made.json()
    assert set(body) == {"id", "name", "libraries", "access", "created_at", "key"}
    assert (body["name"], body["libraries"], body["access"]) == ("reader", [lib], "read")
    listed = admin.get("/v1/keys").json()["keys"]
    mine = [k for k in listed if k["id"] == body["id"]]
    assert len(mine) == 1
    assert "key" not in mine[0]  # no secrets in the list
    assert body["key"] not in admin.get("/v1/keys").text
    reader = bearer(body["key"])
    assert admin.get(f"/v1/libraries/{lib}", headers=reader).status_code == 200
    assert admin.delete(f"/v1/keys/{body['id']}").status_code == 204
    assert_problem(admin.get(f"/v1/libraries/{lib}", headers=reader), 401, "unauthorized")
    assert_problem(admin.delete(f"/v1/keys/{body['id']}"), 404, "not_found")
    assert all(k["id"] != body["id"] for k in admin.get("/v1/keys").json()["keys"])


def test_bad_key_requests_name_the_field(admin: httpx.Client) -> None:
    lib = new_library(admin)
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"name": "", "libraries": [lib], "access": "read"}, 422, "invalid_argument", "name"),
        ({"name": "x", "libraries": [], "access": "read"}, 422, "invalid_argument", "libraries"),
        (
            {"name": "x", "libraries": ["*", lib], "access": "read"},
            422,
            "invalid_argument",
            "libraries",
        ),
        ({"name": "x", "libraries": [lib], "access": "admin"}, 422, "invalid_argument", "access"),
        ({"name": "x", "libraries": ["no-such"], "access": "read"}, 404, "not_found", "libraries"),
    ]
    for body, status, code, field in cases:
        problem = assert_problem(admin.post("/v1/keys", json=body), status, code)
        assert problem["field"] == field, problem


def test_only_the_admin_manages_keys_and_backups(admin: httpx.Client) -> None:
    everything = bearer(make_key(admin, ["*"], "write"))
    assert_problem(admin.get("/v1/keys", headers=everything), 403, "forbidden")
    body = {"name": "x", "libraries": ["*"], "access": "write"}
    assert_problem(admin.post("/v1/keys", json=body, headers=everything), 403, "forbidden")
    assert_problem(admin.post("/v1/backups", json={}, headers=everything), 403, "forbidden")


# -- the matrix -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A REST call: ``prepare(admin, a, b)`` -> (method, path, json body) and what it needs:
    ``read``/``write`` of library ``a`` or ``b``, ``manage``, ``every`` (a ``*`` key),
    ``admin`` or ``any``. A ``bytes`` body is NDJSON."""

    name: str
    need: str
    on: str | None  # "a" or "b": the library the need is about
    prepare: Callable[[httpx.Client, str, str], tuple[str, str, Any]]
    #: the answers of an allowed call (a backup of an in-memory server is a 422)
    allowed_statuses: tuple[int, ...] = (200, 201, 204)


def _doc_route(method: str, on: str, body: Any = None) -> Callable[..., tuple[str, str, Any]]:
    def prepare(admin: httpx.Client, a: str, b: str) -> tuple[str, str, Any]:
        lib = a if on == "a" else b
        return method, f"/v1/libraries/{lib}/documents/{new_document(admin, lib)}", body

    return prepare


def _delete_documents_route(on: str) -> Callable[..., tuple[str, str, Any]]:
    def prepare(admin: httpx.Client, a: str, b: str) -> tuple[str, str, Any]:
        lib = a if on == "a" else b
        body = {"ids": [new_document(admin, lib)]}
        return "POST", f"/v1/libraries/{lib}/documents/delete", body

    return prepare


def _key_id(admin: httpx.Client, library_id: str) -> str:
    body = {"name": "r", "libraries": [library_id], "access": "read"}
    return str(admin.post("/v1/keys", json=body).json()["id"])


def _lib_route(method: str, on: str, suffix: str = "", body: Any = None) -> Any:
    def prepare(admin: httpx.Client, a: str, b: str) -> tuple[str, str, Any]:
        return method, f"/v1/libraries/{a if on == 'a' else b}{suffix}", body

    return prepare


DOC = {"title": "x", "chunks": [{"text": "t", "embedding": [0.0, 1.0, 0.0, 0.0]}]}
SEARCH = {"query_vector": [1.0, 0.0, 0.0, 0.0], "k": 1}
ROUTES: list[Route] = [
    Route("list libraries", "any", None, lambda ad, a, b: ("GET", "/v1/libraries", None)),
    Route("ready", "any", None, lambda ad, a, b: ("GET", "/v1/health/ready", None)),
    Route("stats", "any", None, lambda ad, a, b: ("GET", "/v1/websockets/stats", None)),
    Route(
        "create library",
        "manage",
        None,
        lambda ad, a, b: ("POST", "/v1/libraries", {"name": uuid.uuid4().hex, "dimension": DIM}),
    ),
    Route(
        "delete library",
        "manage",
        None,
        lambda ad, a, b: ("DELETE", f"/v1/libraries/{new_library(ad)}", None),
    ),
    Route("metrics", "every", None, lambda ad, a, b: ("GET", "/metrics", None)),
    Route("list keys", "admin", None, lambda ad, a, b: ("GET", "/v1/keys", None)),
    Route(
        "make a key",
        "admin",
        None,
        lambda ad, a, b: ("POST", "/v1/keys", {"name": "m", "libraries": [a], "access": "read"}),
    ),
    Route(
        "revoke a key",
        "admin",
        None,
        lambda ad, a, b: ("DELETE", f"/v1/keys/{_key_id(ad, a)}", None),
    ),
    Route(
        "backup",
        "admin",
        None,
        lambda ad, a, b: ("POST", "/v1/backups", {}),
        allowed_statuses=(422,),  # an in-memory server: nothing to back up
    ),
]
for side in ("a", "b"):
    ROUTES += [
        Route(f"get library {side}", "read", side, _lib_route("GET", side)),
        Route(f"list documents {side}", "read", side, _lib_route("GET", side, "/documents")),
        Route(f"search {side}", "read", side, _lib_route("POST", side, "/search", SEARCH)),
        Route(f"add {side}", "write", side, _lib_route("POST", side, "/documents", DOC)),
        Route(
            f"update library {side}",
            "write",
            side,
            _lib_route("PATCH", side, "", {"description": "changed"}),
        ),
        Route(f"get document {side}", "read", side, _doc_route("GET", side)),
        Route(f"update document {side}", "write", side, _doc_route("PATCH", side, {"title": "y"})),
        Route(f"delete document {side}", "write", side, _doc_route("DELETE", side)),
        Route(f"upsert document {side}", "write", side, _doc_route("PUT", side, DOC)),
        Route(
            f"query documents {side}",
            "read",
            side,
            _lib_route("POST", side, "/documents/query", {"filter": {}, "limit": 5}),
        ),
        Route(f"count {side}", "read", side, _lib_route("POST", side, "/documents/count", {})),
        Route(f"delete documents {side}", "write", side, _delete_documents_route(side)),
        Route(
            f"NDJSON upsert {side}",
            "write",
            side,
            _lib_route(
                "POST",
                side,
                "/documents/stream?upsert=true",
                (json.dumps(DOC | {"id": "same"}) + "\n").encode(),
            ),
        ),
        Route(
            f"NDJSON ingest {side}",
            "write",
            side,
            _lib_route("POST", side, "/documents/stream", (json.dumps(DOC) + "\n").encode()),
        ),
        Route(
            f"NDJSON search {side}",
            "read",
            side,
            _lib_route("POST", side, "/search/stream", (json.dumps(SEARCH) + "\n").encode()),
        ),
    ]

#: key kind -> (libraries of the key: "a", "ab" or "*"; access), or None for no valid key
KINDS: dict[str, tuple[str, str] | None] = {
    "admin": ("admin", "admin"),
    "read a": ("a", "read"),
    "write a": ("a", "write"),
    "read ab": ("ab", "read"),
    "write ab": ("ab", "write"),
    "read *": ("*", "read"),
    "write *": ("*", "write"),
}


def allowed(kind: tuple[str, str], need: str, on: str | None) -> bool:
    libraries, access = kind
    if need == "any" or libraries == "admin":
        return True
    if need == "admin":
        return False
    if need == "every":
        return libraries == "*"
    if need == "manage":
        return libraries == "*" and access == "write"
    reach = libraries == "*" or (on is not None and on in libraries)
    return reach and (need == "read" or access == "write")


def _keys_of_every_kind(admin: httpx.Client, a: str, b: str) -> dict[str, str | None]:
    ids = {"a": [a], "ab": [a, b], "*": ["*"]}
    keys: dict[str, str | None] = {
        kind: make_key(admin, ids[spec[0]], spec[1])
        for kind, spec in KINDS.items()
        if spec and spec[0] != "admin"
    }
    revoked = admin.post("/v1/keys", json={"name": "r", "libraries": ["*"], "access": "write"})
    assert admin.delete(f"/v1/keys/{revoked.json()['id']}").status_code == 204
    return keys | {
        "admin": ADMIN_KEY,
        "revoked": revoked.json()["key"],
        "missing": None,
        "wrong": "arrwdb_nope",
    }


def test_every_route_with_every_key(admin: httpx.Client) -> None:
    a, b = new_library(admin), new_library(admin)
    keys = _keys_of_every_kind(admin, a, b)
    beyond = checked = 0
    for route in ROUTES:
        for kind, key in keys.items():
            method, path, body = route.prepare(admin, a, b)
            headers = {"Authorization": ""} | bearer(key)
            if isinstance(body, bytes):
                headers["Content-Type"] = "application/x-ndjson"
                r = admin.request(method, path, content=body, headers=headers)
            else:
                r = admin.request(method, path, json=body, headers=headers)
            checked += 1
            spec = KINDS.get(kind)
            if spec is None:
                assert_problem(r, 401, "unauthorized")
            elif allowed(spec, route.need, route.on):
                ok = route.allowed_statuses
                assert r.status_code in ok, (route.name, kind, r.status_code, r.text)
                if isinstance(body, bytes):  # every line answered
                    assert all(json.loads(x).get("success", True) for x in r.text.splitlines())
            else:
                assert_problem(r, 403, "forbidden")
                beyond += 1
    assert checked == len(ROUTES) * len(keys)
    print(f"{checked} checks, {beyond} refusals")
    assert beyond > 80  # the matrix has refusals to check
    # what the lists show: only what the key may read
    one = bearer(keys["read a"])
    assert [x["id"] for x in admin.get("/v1/libraries", headers=one).json()["libraries"]] == [a]


async def test_sse_streams_with_every_key(secured: BackgroundServer, admin: httpx.Client) -> None:
    a, b = new_library(admin), new_library(admin)
    read_a = make_key(admin, [a], "read")
    async with httpx.AsyncClient(base_url=secured.url, timeout=10) as http:
        for key, path, status in [
            (None, f"/v1/libraries/{a}/events", 401),
            ("wrong", f"/v1/libraries/{a}/events", 401),
            (read_a, f"/v1/libraries/{b}/events", 403),
        ]:
            r = await http.get(path, headers=bearer(key))
            assert r.status_code == status, r.text
        # the stream of every library shows only what the key may read; the key may come
        # in the URL (EventSource cannot set headers)
        url = f"/v1/events?since=earliest&access_token={read_a}"
        async with aconnect_sse(http, "GET", url) as source:
            assert source.response.status_code == 200
            new_document(admin, b)
            new_document(admin, a)
            with anyio.fail_after(5):
                async for event in source.aiter_sse():
                    envelope = json.loads(event.data)
                    assert envelope["library_id"] == a, envelope
                    if envelope["type"] == "document.added":
                        break


async def test_websocket_with_every_key(secured: BackgroundServer, admin: httpx.Client) -> None:
    a, b = new_library(admin), new_library(admin)
    read_a, write_a = make_key(admin, [a], "read"), make_key(admin, [a], "write")
    base = f"{secured.ws_url}/v1/libraries"
    for headers, library, code in [
        ({}, a, 4401),
        (bearer("wrong"), a, 4401),
        (bearer(read_a), b, 4403),
    ]:
        async with websockets.connect(f"{base}/{library}/ws", additional_headers=headers) as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await recv(ws)
            assert ws.close_code == code, ws.close_reason
    actions = [
        ("search", SEARCH, True),
        ("get", {"document_id": new_document(admin, a)}, True),
        ("add", DOC, False),
        ("delete", {"document_id": new_document(admin, a)}, False),
    ]
    async with websockets.connect(f"{base}/{a}/ws?access_token={read_a}") as ws:
        assert (await recv(ws))["type"] == "system"
        for n, (action, data, ok) in enumerate(actions):
            await ws.send(request(action, f"r{n}", data))
            answer = await response(ws)
            assert answer["success"] is ok, (action, answer)
            if not ok:
                assert answer["code"] == "forbidden"  # and the socket stays open
    async with websockets.connect(f"{base}/{a}/ws", additional_headers=bearer(write_a)) as ws:
        assert (await recv(ws))["type"] == "system"
        await ws.send(request("add", "w", DOC))
        answer = await response(ws)
        assert answer["success"] is True, answer


async def response(ws: websockets.ClientConnection) -> dict[str, Any]:
    """The next response (events may come first)."""
    while (message := await recv(ws))["type"] != "response":
        pass
    return message


async def test_every_websocket_action_and_sse_stream_with_every_key(
    secured: BackgroundServer, admin: httpx.Client
) -> None:
    a, b = new_library(admin), new_library(admin)
    keys = _keys_of_every_kind(admin, a, b)
    actions = {  # action -> (what it needs, its data)
        "search": ("read", lambda lib: SEARCH),
        "get": ("read", lambda lib: {"document_id": new_document(admin, lib)}),
        "subscribe": ("read", lambda lib: {}),
        "unsubscribe": ("read", lambda lib: {}),
        "add": ("write", lambda lib: DOC),
        "delete": ("write", lambda lib: {"document_id": new_document(admin, lib)}),
    }
    checked = refused = 0
    async with httpx.AsyncClient(base_url=secured.url, timeout=10) as http:
        for kind, key in keys.items():
            spec = KINDS.get(kind)
            for side, lib in (("a", a), ("b", b)):
                url = f"{secured.ws_url}/v1/libraries/{lib}/ws"
                async with websockets.connect(url, additional_headers=bearer(key)) as ws:
                    if spec is None or not allowed(spec, "read", side):
                        with pytest.raises(websockets.ConnectionClosed):
                            await recv(ws)
                        assert ws.close_code == (4401 if spec is None else 4403), (kind, side)
                        checked += 1
                        refused += 1
                        continue
                    assert (await recv(ws))["type"] == "system"
                    for n, (action, (need, data)) in enumerate(actions.items()):
                        await ws.send(request(action, f"{kind}-{n}", data(lib)))
                        answer = await response(ws)
                        checked += 1
                        if allowed(spec, need, side):
                            assert answer["success"] is True, (kind, side, action, answer)
                        else:
                            assert answer["code"] == "forbidden", (kind, side, action, answer)
                            refused += 1
                    assert ws.close_code is None  # refusals leave the socket open
                for path in (f"/v1/libraries/{lib}/events", "/v1/events"):
                    r = await http.get(path, headers=bearer(key), params={"since": "x"})
                    checked += 1
                    if spec is None:
                        assert r.status_code == 401, (kind, path)
                    elif path == "/v1/events" or allowed(spec, "read", side):
                        assert r.status_code == 422, (kind, path)  # past the guard: bad since
                    else:
                        assert r.status_code == 403, (kind, path)
                        refused += 1
    print(f"{checked} WebSocket and SSE checks, {refused} refusals")
    assert refused > 10  # (18 with the tables above)


async def test_revoking_a_key_closes_its_streams_within_a_second(
    secured: BackgroundServer, admin: httpx.Client
) -> None:
    lib = new_library(admin)
    async with httpx.AsyncClient(base_url=secured.url, timeout=10) as http:
        body = {"name": "s", "libraries": [lib], "access": "read"}
        made = await http.post("/v1/keys", json=body, headers=bearer(ADMIN_KEY))
        key, key_id = made.json()["key"], made.json()["id"]
        ws = await websockets.connect(
            f"{secured.ws_url}/v1/libraries/{lib}/ws", additional_headers=bearer(key)
        )
        assert (await recv(ws))["type"] == "system"
        async with aconnect_sse(
            http, "GET", f"/v1/libraries/{lib}/events", headers=bearer(key)
        ) as source:
            assert source.response.status_code == 200
            await anyio.sleep(0.1)
            started = anyio.current_time()
            revoked = await http.delete(f"/v1/keys/{key_id}", headers=bearer(ADMIN_KEY))
            assert revoked.status_code == 204
            with anyio.fail_after(1.0):
                events = [json.loads(e.data) async for e in source.aiter_sse()]
            with anyio.fail_after(1.0):
                await drain_until_closed(ws)
            assert anyio.current_time() - started < 1.0
        assert events[-1]["type"] == "stream.closed"
        assert events[-1]["data"]["reason"] == "unauthorized"
        assert ws.close_code == 4401


async def drain_until_closed(ws: websockets.ClientConnection) -> None:
    with pytest.raises(websockets.ConnectionClosed):
        async for _ in ws:
            pass


# -- browsers: Host, Origin ---------------------------------------------------------------------


def test_host_and_origin_are_checked(make_server: Any) -> None:
    live = make_server(cors_origins=("http://app.example",))
    with httpx.Client(base_url=live.url) as http:
        # DNS rebinding: a page on evil.example resolving to 127.0.0.1
        assert_problem(
            http.get("/v1/libraries", headers={"Host": "evil.example"}), 400, "invalid_host"
        )
        assert http.get("/v1/libraries", headers={"Host": "localhost:1234"}).status_code == 200
        body = {"name": uuid.uuid4().hex}
        foreign = http.post("/v1/libraries", json=body, headers={"Origin": "http://evil.example"})
        assert_problem(foreign, 403, "forbidden_origin")
        # reads from any origin are left to CORS (the browser hides the answer)
        assert (
            http.get("/v1/libraries", headers={"Origin": "http://evil.example"}).status_code == 200
        )
        own = http.post("/v1/libraries", json=body, headers={"Origin": live.url})
        assert own.status_code == 201
        listed = http.post(
            "/v1/libraries",
            json={"name": uuid.uuid4().hex},
            headers={"Origin": "http://app.example"},
        )
        assert listed.status_code == 201


async def test_websocket_from_a_foreign_origin_is_refused(make_server: Any) -> None:
    live = make_server()
    async with httpx.AsyncClient(base_url=live.url) as http:
        lib = (await http.post("/v1/libraries", json={"name": uuid.uuid4().hex})).json()["id"]
    url = f"{live.ws_url}/v1/libraries/{lib}/ws"
    async with websockets.connect(url, origin="http://evil.example") as ws:  # type: ignore[arg-type]
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 4403
        assert "forbidden_origin" in ws.close_reason
    async with websockets.connect(url, origin=live.url) as ws:  # type: ignore[arg-type]
        assert (await recv(ws))["type"] == "system"


def test_keys_survive_a_restart_on_disk(tmp_path: Any) -> None:
    settings = {"api_key": ADMIN_KEY, "storage": "disk", "data_dir": str(tmp_path)}
    live = start_server(**settings)
    try:
        with httpx.Client(base_url=live.url, headers=bearer(ADMIN_KEY)) as admin:
            key = make_key(admin, ["*"], "read")
    finally:
        live.stop()
    assert key not in (tmp_path / "keys.json").read_text()  # only its digest is kept
    again = start_server(**settings)
    try:
        with httpx.Client(base_url=again.url, headers=bearer(key)) as reader:
            assert reader.get("/v1/libraries").status_code == 200
    finally:
        again.stop()


# -- limits per client ----------------------------------------------------------------------------


async def test_requests_beyond_the_rate_are_429_and_ws_errors(make_server: Any) -> None:
    live = make_server(rate_limit=5, rate_burst=5)
    async with httpx.AsyncClient(base_url=live.url) as http:
        statuses = [(await http.get("/v1/libraries")).status_code for _ in range(5)]
        assert statuses == [200] * 5
        refused = await http.get("/v1/libraries")
        problem = assert_problem(refused, 429, "rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
        assert "rate_limit" in problem["detail"]
        assert (await http.get("/v1/health")).status_code == 200  # health is never limited
        await anyio.sleep(1.0)  # the allowance comes back
        lib = (await http.post("/v1/libraries", json={"name": uuid.uuid4().hex})).json()["id"]
        await anyio.sleep(1.0)
        async with websockets.connect(f"{live.ws_url}/v1/libraries/{lib}/ws") as ws:
            assert (await recv(ws))["type"] == "system"
            codes = []
            for n in range(8):
                await ws.send(request("search", f"s{n}", {"query_text": "x"}))
            for _ in range(8):
                answer = await response(ws)
                codes.append(answer.get("code"))
            assert "rate_limited" in codes
            await anyio.sleep(1.0)
            await ws.send(request("search", "after", {"query_text": "x"}))
            assert (await response(ws))["success"] is True  # the socket stayed open


async def sse_streams_gone(http: httpx.AsyncClient) -> None:
    for _ in range(250):
        if not (await http.get("/v1/websockets/stats")).json()["sse_streams"]:
            return
        await anyio.sleep(0.02)


async def test_streams_beyond_the_per_client_limit_are_refused(make_server: Any) -> None:
    live = make_server(max_streams_per_client=2)
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as http:
        lib = (await http.post("/v1/libraries", json={"name": uuid.uuid4().hex})).json()["id"]
        url = f"/v1/libraries/{lib}/events"
        async with aconnect_sse(http, "GET", url) as one, aconnect_sse(http, "GET", url) as two:
            assert one.response.status_code == two.response.status_code == 200
            assert_problem(await http.get(url), 429, "rate_limited")
            async with websockets.connect(f"{live.ws_url}/v1/libraries/{lib}/ws") as ws:
                with pytest.raises(websockets.ConnectionClosed):
                    await recv(ws)
                assert ws.close_code == 1013
        with anyio.fail_after(5):  # the server lets go of the streams the client closed
            await sse_streams_gone(http)
        async with websockets.connect(f"{live.ws_url}/v1/libraries/{lib}/ws") as ws:
            assert (await recv(ws))["type"] == "system"  # the streams closed: room again
