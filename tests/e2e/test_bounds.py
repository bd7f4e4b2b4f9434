"""Every bound of ``arrwdb.domain.limits``, just below it, just above it and with a value of the
wrong type, through every way in that takes the input: the in-process API, REST, the WebSocket
and the NDJSON streams all report the same ``code`` and ``field``."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

import arrwdb
from arrwdb.domain import limits
from arrwdb.domain.limits import Bound
from arrwdb.server import BackgroundServer
from conftest import alibrary_id, connect, recv, request

pytestmark = pytest.mark.anyio

NDJSON = {"content-type": "application/x-ndjson"}
Outcome = tuple[str, str | None]  # (code, field)


@dataclass(frozen=True)
class Case:
    """``value`` for ``field`` in a request of ``kind`` (search, library, page, document)."""

    kind: str
    field: str
    value: Any

    @property
    def payload(self) -> dict[str, Any]:
        """The request's body with ``field`` (a dotted path) set to ``value``."""
        base: dict[str, Any] = {
            "search": {"query_text": "x"},
            "library": {"name": f"bounds-{uuid.uuid4().hex[:12]}"},
            "page": {},
            "document": {"title": "t", "text": "some text"},
        }[self.kind]
        *outer, last = self.field.split(".")
        node = base
        for name in outer:
            node = node.setdefault(name, {})
        node[last] = self.value
        return base


def _integers(kind: str, bound: Bound, wrong: Any) -> list[Case]:
    return [Case(kind, bound.name, v) for v in (bound.low - 1, bound.high + 1, wrong)]


def _lengths(kind: str, field: str, bound: Bound) -> list[Case]:
    return [Case(kind, field, v) for v in ("n" * (bound.low - 1), "n" * (bound.high + 1), 5)]


CASES = [
    *_integers("search", limits.K, "ten"),
    *_integers("search", limits.EF, 2.5),
    *_integers("library", limits.DIMENSION, "big"),
    *_integers("library", limits.HNSW_M, "wide"),
    *_integers("library", limits.EF_CONSTRUCTION, "x"),
    *_integers("library", limits.EF_SEARCH, [64]),
    *_integers("page", limits.PAGE_LIMIT, "ten"),
    *_lengths("library", "name", limits.NAME_LENGTH),
    *_lengths("document", "id", limits.NAME_LENGTH),
]
#: The kinds of request the WebSocket (``search``, ``add``) and the NDJSON streams take too.
STREAMED = {"search", "document"}


def _case_id(case: Case) -> str:
    value = case.value
    shown = f"<{len(value)} chars>" if isinstance(value, str) and len(value) > 8 else repr(value)
    return f"{case.kind}-{case.field}={shown}"


# -- the ways in ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> Iterator[tuple[arrwdb.Database, arrwdb.LibraryHandle]]:
    with arrwdb.open() as db:
        yield db, db.create_library("bounds")


def in_process(local: tuple[arrwdb.Database, arrwdb.LibraryHandle], case: Case) -> Outcome:
    db, lib = local
    body = case.payload
    calls = {
        "search": lambda: lib.search(body.pop("query_text"), **body),
        "library": lambda: db.create_library(**body),
        "page": lambda: lib.list_documents(**body),
        "document": lambda: lib.add_document(**body),
    }
    with pytest.raises(arrwdb.ArrwdbError) as caught:
        calls[case.kind]()
    field = caught.value.details.get("field")
    return caught.value.code, field


async def over_rest(client: httpx.AsyncClient, lib: str, case: Case) -> Outcome:
    body = case.payload
    if case.kind == "search":
        response = await client.post(f"/v1/libraries/{lib}/search", json=body)
    elif case.kind == "library":
        response = await client.post("/v1/libraries", json=body)
    elif case.kind == "page":
        response = await client.get(f"/v1/libraries/{lib}/documents", params=body)
    else:
        response = await client.post(f"/v1/libraries/{lib}/documents", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["detail"]
    return problem["code"], problem.get("field")


async def over_websocket(ws: ClientConnection, case: Case) -> Outcome:
    action = {"search": "search", "document": "add"}[case.kind]
    await ws.send(request(action, "bounds", case.payload))
    answer = await recv(ws)
    assert (answer["type"], answer["request_id"], answer["success"]) == (
        "response",
        "bounds",
        False,
    )
    assert answer["error"]
    field = answer.get("field")
    # WebSocket fields are paths into the message: the request's input is under "data"
    assert field is None or field.startswith("data."), answer
    return answer["code"], field and field.removeprefix("data.")


async def over_ndjson(client: httpx.AsyncClient, lib: str, case: Case) -> Outcome:
    route = {"search": "search/stream", "document": "documents/stream"}[case.kind]
    line = json.dumps(case.payload).encode() + b"\n"
    response = await client.post(f"/v1/libraries/{lib}/{route}", content=line, headers=NDJSON)
    assert response.status_code == 200, response.text
    answer = json.loads(response.text.splitlines()[0])
    assert (answer["line"], answer["success"]) == (1, False)
    assert answer["error"]
    return answer["code"], answer.get("field")


# -- the property ---------------------------------------------------------------------------


@pytest.fixture
async def client(server: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as http:
        yield http


@pytest.mark.parametrize("case", CASES, ids=_case_id)
async def test_every_way_in_reports_the_same_code_and_field(
    case: Case,
    server: BackgroundServer,
    client: httpx.AsyncClient,
    local: tuple[arrwdb.Database, arrwdb.LibraryHandle],
) -> None:
    lib = await alibrary_id(server)
    outcomes = {
        "in-process": in_process(local, case),
        "REST": await over_rest(client, lib, case),
    }
    if case.kind in STREAMED:
        ws, _ = await connect(server, lib)
        try:
            outcomes["WebSocket"] = await over_websocket(ws, case)
        finally:
            await ws.close()
        outcomes["NDJSON"] = await over_ndjson(client, lib, case)
    expected = ("invalid_argument", case.field)
    assert outcomes == dict.fromkeys(outcomes, expected)


async def test_the_openapi_document_shows_every_bound(client: httpx.AsyncClient) -> None:
    """The wire types enforce the bounds so that the OpenAPI document can show them."""
    document = (await client.get("/schema/openapi.json")).json()
    schemas = document["components"]["schemas"]
    shown = {
        limits.K: schemas["SearchIn"]["properties"]["k"],
        limits.EF: schemas["SearchIn"]["properties"]["ef"],
        limits.DIMENSION: schemas["LibraryCreate"]["properties"]["dimension"],
        limits.HNSW_M: schemas["IndexParams"]["properties"]["m"],
        limits.EF_CONSTRUCTION: schemas["IndexParams"]["properties"]["ef_construction"],
        limits.EF_SEARCH: schemas["IndexParams"]["properties"]["ef_search"],
    }
    (listing,) = (
        operation["get"]
        for path, operation in document["paths"].items()
        if path.endswith("/documents") and "get" in operation
    )
    (limit,) = (p["schema"] for p in listing["parameters"] if p["name"] == "limit")
    shown[limits.PAGE_LIMIT] = limit
    for bound, schema in shown.items():
        assert (schema["minimum"], schema["maximum"]) == (bound.low, bound.high), bound
    name = schemas["LibraryCreate"]["properties"]["name"]
    assert (name["minLength"], name["maxLength"]) == (
        limits.NAME_LENGTH.low,
        limits.NAME_LENGTH.high,
    )
