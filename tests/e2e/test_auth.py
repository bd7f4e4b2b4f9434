"""API keys and scopes on every transport, against a real server with an admin key.

The matrix test makes one key of each kind (read/write x one library, two libraries, every
library; revoked, missing, wrong) and calls every route of the app with each (REST, NDJSON, the
SSE streams, the WebSocket handshake; the routes are taken from the app's router, so a new route
without a row in the matrix fails it); a second matrix tries every WebSocket action. Every
access beyond the key's scope is refused with the status or close code of the contract, and
every access within it is let through.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
import websockets
import websockets.sync.client as ws_sync
from httpx_sse import aconnect_sse
from litestar import Litestar
from litestar.routes import HTTPRoute, WebSocketRoute

from arrwdb.server import BackgroundServer
from arrwdb.transports.envelopes import WS_ACTIONS
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

#: What a route needs of the key: ``public`` (nothing: health and the static pages),
#: ``any`` (any valid key), ``read``/``write`` of library ``a`` or ``b``, ``manage`` (create
#: and delete libraries: a ``*`` write key), ``every`` (a ``*`` key) or ``admin``.
NEEDS = ("public", "any", "read", "write", "manage", "every", "admin")


@dataclass(frozen=True)
class Route:
    """A call: ``prepare(admin, a, b)`` -> (method, path, body) and what it needs (``need``, of
    library ``on``). The method ``WS`` opens the WebSocket; a ``bytes`` body is NDJSON; a
    ``stream`` is an SSE stream (opened, its type checked, closed)."""

    name: str
    need: str
    on: str | None  # "a" or "b": the library the need is about
    prepare: Callable[[httpx.Client, str, str], tuple[str, str, Any]]
    #: the answers of an allowed call (a backup of an in-memory server is a 422)
    allowed_statuses: tuple[int, ...] = (200, 201, 204)
    stream: bool = False


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


def _get_or_create(admin: httpx.Client, a: str, b: str) -> tuple[str, str, Any]:
    """``POST /v1/libraries?exist_ok=true`` naming library ``a``, as it is: 200, ``a``."""
    name = admin.get(f"/v1/libraries/{a}").json()["name"]
    return "POST", "/v1/libraries?exist_ok=true", {"name": name, "dimension": DIM}


def _fixed(method: str, path: str, body: Any = None) -> Any:
    return lambda admin, a, b: (method, path, body)


DOC = {"title": "x", "chunks": [{"text": "t", "embedding": [0.0, 1.0, 0.0, 0.0]}]}
SEARCH = {"query_vector": [1.0, 0.0, 0.0, 0.0], "k": 1}
WATCH = {"query_vector": [1.0, 0.0, 0.0, 0.0], "k": 1}


def new_watch(admin: httpx.Client, library_id: str) -> str:
    r = admin.post(f"/v1/libraries/{library_id}/watches", json=WATCH)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _watch_route(method: str, on: str, suffix: str = "") -> Callable[..., tuple[str, str, Any]]:
    def prepare(admin: httpx.Client, a: str, b: str) -> tuple[str, str, Any]:
        lib = a if on == "a" else b
        return method, f"/v1/libraries/{lib}/watches/{new_watch(admin, lib)}{suffix}", None

    return prepare


ROUTES: list[Route] = [
    Route("health", "public", None, _fixed("GET", "/v1/health")),
    Route("dashboard", "public", None, _fixed("GET", "/ui")),
    Route("dashboard file", "public", None, _fixed("GET", "/ui/app.js")),
    Route("API page", "public", None, _fixed("GET", "/schema")),
    Route("API page (swagger)", "public", None, _fixed("GET", "/schema/swagger")),
    Route("API page file", "public", None, _fixed("GET", "/schema/assets/apidocs.js")),
    Route("OpenAPI document", "any", None, _fixed("GET", "/schema/openapi.json")),
    # a page no render plugin has: past the guard, not found
    Route("other API page", "any", None, _fixed("GET", "/schema/nothing"), (404,)),
    Route("ready", "any", None, _fixed("GET", "/v1/health/ready")),
    Route("list libraries", "any", None, _fixed("GET", "/v1/libraries")),
    Route("stats", "any", None, _fixed("GET", "/v1/websockets/stats")),
    # the stream of every library: a key sees the libraries it may read
    Route("events of every library", "any", None, _fixed("GET", "/v1/events"), stream=True),
    Route(
        "create library",
        "manage",
        None,
        lambda ad, a, b: ("POST", "/v1/libraries", {"name": uuid.uuid4().hex, "dimension": DIM}),
    ),
    Route("get or create library", "manage", None, _get_or_create, allowed_statuses=(200,)),
    Route(
        "delete library",
        "manage",
        None,
        lambda ad, a, b: ("DELETE", f"/v1/libraries/{new_library(ad)}", None),
    ),
    Route("metrics", "every", None, _fixed("GET", "/metrics")),
    Route("list keys", "admin", None, _fixed("GET", "/v1/keys")),
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
        _fixed("POST", "/v1/backups", {}),
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
        # watches are reads: a key that reads a library may watch it
        Route(f"make a watch {side}", "read", side, _lib_route("POST", side, "/watches", WATCH)),
        Route(f"list watches {side}", "read", side, _lib_route("GET", side, "/watches")),
        Route(f"get a watch {side}", "read", side, _watch_route("GET", side)),
        Route(f"delete a watch {side}", "read", side, _watch_route("DELETE", side)),
        Route(
            f"events of a watch {side}",
            "read",
            side,
            _watch_route("GET", side, "/events"),
            stream=True,
        ),
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
        Route(f"events {side}", "read", side, _lib_route("GET", side, "/events"), stream=True),
        Route(f"WebSocket {side}", "read", side, _lib_route("WS", side, "/ws")),
    ]
assert all(route.need in NEEDS for route in ROUTES)

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
    if need in ("public", "any") or libraries == "admin":
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


RouteKey = tuple[str, str]  # (method, path template); the method of the WebSocket is "WS"


def app_routes(app: Litestar) -> set[RouteKey]:
    """Every (method, template) the app serves, as its router has them. ``OPTIONS`` (CORS
    preflights, which carry no key) is left out."""
    found: set[RouteKey] = set()
    for route in app.routes:
        template = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        if isinstance(route, WebSocketRoute):
            found.add(("WS", template))
        elif isinstance(route, HTTPRoute):
            found |= {(m, template) for m in route.methods if m not in ("OPTIONS", "HEAD")}
        else:
            raise AssertionError(f"a kind of route the key matrix cannot call: {route!r}")
    return found


def served_by(routes: set[RouteKey], method: str, path: str) -> RouteKey:
    """The route of ``routes`` that answers ``method path`` (a literal segment is preferred
    to a parameter, as the router does)."""
    path = path.split("?", 1)[0]
    matches = [
        (m, t)
        for m, t in routes
        if m == method and re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", t), path)
    ]
    assert matches, f"the app serves no route for {method} {path}"
    return max(matches, key=lambda r: sum(not s.startswith("{") for s in r[1].split("/")))


def _socket_refusal(url: str, key: str | None) -> tuple[int, str] | None:
    """The close code and reason of a refused WebSocket; None if it was welcomed."""
    with ws_sync.connect(url, additional_headers=bearer(key), open_timeout=10) as ws:
        try:
            welcome = json.loads(ws.recv(timeout=10))
        except websockets.ConnectionClosed:
            assert ws.close_code is not None
            return ws.close_code, ws.close_reason or ""
        assert welcome["type"] == "system", welcome
        return None


def test_every_route_with_every_key(secured: BackgroundServer, admin: httpx.Client) -> None:
    """Every route the app has (taken from its router: a route added without a row here
    fails this test), with every kind of key."""
    served = app_routes(secured.app)
    a, b = new_library(admin), new_library(admin)
    keys = _keys_of_every_kind(admin, a, b)
    called: set[RouteKey] = set()
    beyond = checked = 0
    with httpx.Client(base_url=secured.url, timeout=10) as client:
        for route in ROUTES:
            for kind, key in keys.items():
                method, path, body = route.prepare(admin, a, b)
                called.add(served_by(served, method, path))
                spec = KINDS.get(kind)
                let_through = route.need == "public" or (
                    spec is not None and allowed(spec, route.need, route.on)
                )
                what = (route.name, kind)
                checked += 1
                if method == "WS":
                    refusal = _socket_refusal(secured.ws_url + path, key)
                    if let_through:
                        assert refusal is None, (*what, refusal)
                    else:
                        assert refusal is not None, what
                        code, reason = refusal
                        assert code == (4401 if spec is None else 4403), (*what, refusal)
                        assert reason, what  # the reason says why
                        beyond += spec is not None
                    continue
                headers = bearer(key)
                if isinstance(body, bytes):
                    headers["Content-Type"] = "application/x-ndjson"
                    request = client.build_request(method, path, content=body, headers=headers)
                else:
                    request = client.build_request(method, path, json=body, headers=headers)
                r = client.send(request, stream=True)
                try:
                    streaming = route.stream and r.status_code == 200
                    if not streaming:
                        r.read()
                    if let_through:
                        assert r.status_code in route.allowed_statuses, (*what, r.status_code)
                        if route.stream:
                            assert r.headers["content-type"].startswith("text/event-stream")
                        if isinstance(body, bytes):  # every line answered
                            lines = r.text.splitlines()
                            assert all(json.loads(x).get("success", True) for x in lines)
                    elif spec is None:
                        assert_problem(r, 401, "unauthorized")
                        assert r.headers["www-authenticate"].startswith("Bearer"), what
                    else:
                        assert_problem(r, 403, "forbidden")
                        beyond += 1
                finally:
                    r.close()
    assert checked == len(ROUTES) * len(keys)
    uncalled = sorted(served - called)
    assert not uncalled, f"routes the key matrix does not call (add a Route for each): {uncalled}"
    print(f"{checked} checks of {len(served)} routes, {beyond} refusals of a valid key")
    assert beyond > 100  # the matrix has refusals to check
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
        # a read key watches its library; a watch of another library is not found from here
        await ws.send(request("watch", "w", WATCH))
        watch_id = (await response(ws))["data"]["watch_id"]
        await ws.send(request("unwatch", "u", {"watch_id": watch_id}))
        assert (await response(ws))["data"] == {"watch_id": watch_id, "unwatched": True}
        await ws.send(request("watch", "b", {"watch_id": new_watch(admin, b)}))
        assert (await response(ws))["code"] == "not_found"
        await ws.send(request("add", "still-open", DOC))
        assert (await response(ws))["code"] == "forbidden"
    async with httpx.AsyncClient(base_url=secured.url, timeout=10) as http:
        b_watch = f"/v1/libraries/{b}/watches"
        for key, method, path, status in [
            (None, "POST", b_watch, 401),
            (read_a, "POST", b_watch, 403),
            (read_a, "GET", b_watch, 403),
            (read_a, "GET", f"{b_watch}/{new_watch(admin, b)}/events", 403),
            (read_a, "POST", f"/v1/libraries/{a}/watches", 201),
        ]:
            r = await http.request(method, path, json=WATCH, headers=bearer(key))
            assert r.status_code == status, (method, path, r.text)
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


async def test_every_websocket_action_with_every_key(
    secured: BackgroundServer, admin: httpx.Client
) -> None:
    """Every action of the WebSocket protocol (taken from its decoder's table: an action added
    without a row here fails this test) on a socket open with every kind of key that may open
    one: beyond the key's access an action gets an error response with code ``forbidden`` and
    the socket stays open. (Who may open a socket is in the route matrix above.)"""
    a, b = new_library(admin), new_library(admin)
    keys = _keys_of_every_kind(admin, a, b)
    watches = {a: new_watch(admin, a), b: new_watch(admin, b)}  # made over REST, followed here
    actions = {  # action -> (what it needs, its data)
        "search": ("read", lambda lib: SEARCH),
        "get": ("read", lambda lib: {"document_id": new_document(admin, lib)}),
        "subscribe": ("read", lambda lib: {}),
        "unsubscribe": ("read", lambda lib: {}),
        "watch": ("read", lambda lib: {"watch_id": watches[lib]}),
        "unwatch": ("read", lambda lib: {"watch_id": watches[lib]}),
        "add": ("write", lambda lib: DOC),
        "delete": ("write", lambda lib: {"document_id": new_document(admin, lib)}),
    }
    assert set(actions) == set(WS_ACTIONS), "every WebSocket action is in the matrix"
    checked = refused = 0
    for kind, key in keys.items():
        spec = KINDS.get(kind)
        for side, lib in (("a", a), ("b", b)):
            if spec is None or not allowed(spec, "read", side):
                continue  # the handshake is refused: see test_every_route_with_every_key
            url = f"{secured.ws_url}/v1/libraries/{lib}/ws"
            async with websockets.connect(url, additional_headers=bearer(key)) as ws:
                assert (await recv(ws))["type"] == "system"
                for n, (action, (need, data)) in enumerate(actions.items()):
                    await ws.send(request(action, f"{kind}-{n}", data(lib)))
                    answer = await response(ws)
                    checked += 1
                    if allowed(spec, need, side):
                        assert answer["success"] is True, (kind, side, action, answer)
                    else:
                        assert answer["code"] == "forbidden", (kind, side, action, answer)
                        assert answer["success"] is False
                        refused += 1
                assert ws.close_code is None  # refusals leave the socket open
    print(f"{checked} WebSocket action checks, {refused} refusals")
    # add and delete, on each of the 5 sockets the read keys open (a; a and b; a and b)
    assert refused == 10


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
