"""Every REST route and status code of the spec, against a real server."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import httpx
from dependency_injector import providers

from arrwdb.adapters.embedders.hashing import HashingEmbedder
from arrwdb.config import Settings
from arrwdb.container import build_container
from arrwdb.server import BackgroundServer
from conftest import add_text, assert_problem, create_library, start_server

# -- health and schema ----------------------------------------------------------------------


def test_health_and_readiness(http: httpx.Client) -> None:
    health = http.get("/v1/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert isinstance(health.json()["version"], str)
    ready = http.get("/v1/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


SPEC_ROUTES = {
    "/v1/health": {"get"},
    "/v1/health/ready": {"get"},
    "/v1/libraries": {"get", "post"},
    "/v1/libraries/{library_id}": {"get", "patch", "delete"},
    "/v1/libraries/{library_id}/documents": {"get", "post"},
    "/v1/libraries/{library_id}/documents/{document_id}": {"get", "patch", "delete"},
    "/v1/libraries/{library_id}/search": {"post"},
    "/v1/libraries/{library_id}/documents/stream": {"post"},
    "/v1/libraries/{library_id}/search/stream": {"post"},
    "/v1/libraries/{library_id}/events": {"get"},
    "/v1/events": {"get"},
    "/v1/websockets/stats": {"get"},
}


def test_openapi_lists_every_rest_route(http: httpx.Client) -> None:
    response = http.get("/schema/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    for path, methods in SPEC_ROUTES.items():
        assert path in doc["paths"], path
        assert methods <= set(doc["paths"][path]), (path, set(doc["paths"][path]))
    search = doc["paths"]["/v1/libraries/{library_id}/search"]["post"]
    assert "requestBody" in search
    assert "application/x-ndjson" in str(
        doc["paths"]["/v1/libraries/{library_id}/documents/stream"]
    )
    page = http.get("/schema")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]


# -- libraries ------------------------------------------------------------------------------


def test_library_crud(http: httpx.Client) -> None:
    name = f"crud-{uuid.uuid4().hex[:8]}"
    created = http.post(
        "/v1/libraries",
        json={"name": name, "description": "d", "metadata": {"team": "a"}, "index": "flat"},
    )
    assert created.status_code == 201
    lib = created.json()
    for field in ("id", "name", "description", "metadata", "dimension", "metric", "index"):
        assert field in lib
    for field in ("index_params", "embedder", "document_count", "chunk_count"):
        assert field in lib
    assert (lib["name"], lib["metric"], lib["index"]) == (name, "cosine", "flat")
    assert lib["created_at"].endswith("Z")

    listed = http.get("/v1/libraries")
    assert listed.status_code == 200
    assert lib["id"] in {x["id"] for x in listed.json()["libraries"]}

    got = http.get(f"/v1/libraries/{lib['id']}")
    assert got.status_code == 200
    assert got.json()["name"] == name

    patched = http.patch(
        f"/v1/libraries/{lib['id']}",
        json={"name": name + "-2", "description": "new", "metadata": {"team": "b"}},
    )
    assert patched.status_code == 200
    body = patched.json()
    assert (body["name"], body["description"], body["metadata"]) == (
        name + "-2",
        "new",
        {"team": "b"},
    )
    only_description = http.patch(f"/v1/libraries/{lib['id']}", json={"description": "x"})
    assert only_description.json()["name"] == name + "-2"

    doc = add_text(http, lib["id"], "t", "some text")
    deleted = http.delete(f"/v1/libraries/{lib['id']}")
    assert deleted.status_code == 204
    assert_problem(http.get(f"/v1/libraries/{lib['id']}"), 404, "not_found")
    assert_problem(http.get(f"/v1/libraries/{lib['id']}/documents/{doc['id']}"), 404, "not_found")


def test_library_errors(http: httpx.Client) -> None:
    lib = create_library(http)
    assert_problem(http.post("/v1/libraries", json={"name": lib["name"]}), 409, "already_exists")
    other = create_library(http)
    assert_problem(
        http.patch(f"/v1/libraries/{other['id']}", json={"name": lib["name"]}),
        409,
        "already_exists",
    )
    bad_metric = assert_problem(
        http.post("/v1/libraries", json={"name": "m", "metric": "hamming"}), 422, "invalid_argument"
    )
    assert bad_metric["field"] == "metric"
    assert_problem(http.post("/v1/libraries", json={"name": "  "}), 422, "invalid_argument")
    missing = assert_problem(http.post("/v1/libraries", json={}), 422, "invalid_argument")
    assert missing["field"] == "name"
    as_json = {"content-type": "application/json"}
    assert_problem(
        http.post("/v1/libraries", content=b"{not json", headers=as_json), 400, "bad_request"
    )
    assert_problem(http.post("/v1/libraries", content=b""), 400, "bad_request")
    # no content type: a page on another site could send that without a CORS preflight
    untyped = assert_problem(
        http.post("/v1/libraries", content=b'{"name": "x"}'), 415, "unsupported_media_type"
    )
    assert untyped["field"] == "Content-Type"
    assert_problem(
        http.post(
            "/v1/libraries", content=b'{"name": "x"}', headers={"content-type": "text/plain"}
        ),
        415,
        "unsupported_media_type",
    )
    assert_problem(
        http.patch(f"/v1/libraries/{lib['id']}", json={"metadata": {"a": {"nested": 1}}}),
        422,
        "invalid_argument",
    )
    assert_problem(http.get("/v1/libraries/no-such-library"), 404, "not_found")
    assert_problem(http.patch("/v1/libraries/no-such-library", json={}), 404, "not_found")
    assert_problem(http.delete("/v1/libraries/no-such-library"), 404, "not_found")


def test_unknown_route_and_method_are_problems(http: httpx.Client) -> None:
    assert_problem(http.get("/v1/nothing-here"), 404, "not_found")
    assert_problem(http.put("/v1/libraries"), 405, "method_not_allowed")


def test_body_too_large_is_413(make_server: Any) -> None:
    live = make_server(max_body_bytes=2048)
    with httpx.Client(base_url=live.url) as http:
        lib = create_library(http)
        big = {"title": "big", "text": "word " * 2000}
        response = http.post(f"/v1/libraries/{lib['id']}/documents", json=big)
        assert_problem(response, 413, "payload_too_large")
        assert http.get("/v1/health").status_code == 200


# -- internal errors and CORS ---------------------------------------------------------------


class BrokenEmbedder:
    """A real (if useless) embedder adapter that fails: the server must not leak why."""

    name = "broken"
    dimension = None

    def embed(self, texts: Sequence[str], dimension: int | None = None) -> Any:
        raise RuntimeError("secret internal detail")


def test_unexpected_errors_are_opaque_and_logged(error_log: Any) -> None:
    settings = Settings()
    container = build_container(settings)
    container.embedders.override(
        providers.Dict(
            hashing=providers.Singleton(HashingEmbedder), broken=providers.Object(BrokenEmbedder())
        )
    )
    live = BackgroundServer(settings, container=container, log_level="warning").start()
    try:
        with httpx.Client(base_url=live.url) as http:
            lib = create_library(http, embedder="broken")
            response = http.post(
                f"/v1/libraries/{lib['id']}/documents", json={"title": "t", "text": "hello"}
            )
            body = assert_problem(response, 500, "internal_error")
            assert "secret" not in response.text
            assert body["detail"]
            assert http.get("/v1/health").status_code == 200
    finally:
        live.stop()
        container.shutdown_resources()
    assert any(r.exc_info and "secret" in str(r.exc_info[1]) for r in error_log.records)


def test_cors_is_off_by_default_and_configurable(http: httpx.Client) -> None:
    preflight = {"origin": "http://app.example", "access-control-request-method": "POST"}
    assert (
        "access-control-allow-origin"
        not in http.options("/v1/libraries", headers=preflight).headers
    )
    live = start_server(cors_origins=("http://app.example",))
    try:
        with httpx.Client(base_url=live.url) as client:
            response = client.options("/v1/libraries", headers=preflight)
            assert response.headers["access-control-allow-origin"] == "http://app.example"
    finally:
        live.stop()
