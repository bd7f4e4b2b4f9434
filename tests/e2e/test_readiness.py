"""Readiness (``GET /v1/health/ready``): 503 while the store cannot write, 200 again once a
write succeeds, and an OpenAPI document that says so with one schema per answer.

The failure is a real one: the disk store starts a new log segment for every write (segments of
one byte), and its data directory is moved away and a file put in its place, so the next write
cannot create its segment (``ENOTDIR``), as on a disk that is full or gone. Putting the
directory back lets the next write through.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dependency_injector import providers

from arrwdb.adapters.storage.disk import DiskStore
from arrwdb.config import Settings
from arrwdb.container import build_container
from arrwdb.server import BackgroundServer
from conftest import PROBLEM, assert_problem

READY = "/v1/health/ready"


@pytest.fixture
def rolling(tmp_path: Path) -> Iterator[tuple[BackgroundServer, Path]]:
    """A disk server whose every write starts a new segment of the log."""
    data = tmp_path / "data"
    settings = Settings(storage="disk", data_dir=str(data))
    container = build_container(settings)
    container.store.override(providers.Singleton(DiskStore, str(data), segment_bytes=1))
    live = BackgroundServer(settings, container=container, log_level="warning").start()
    yield live, data
    live.stop()
    container.shutdown_resources()


def _doc(title: str) -> dict[str, Any]:
    return {"title": title, "chunks": [{"text": title, "embedding": [1.0, 0.0]}]}


def test_ready_is_503_while_writes_fail_and_200_after_one_succeeds(
    rolling: tuple[BackgroundServer, Path],
) -> None:
    live, data = rolling
    away = data.with_name("data-away")
    with httpx.Client(base_url=live.url, timeout=10) as http:
        lib = http.post("/v1/libraries", json={"name": uuid.uuid4().hex, "dimension": 2})
        docs = f"/v1/libraries/{lib.json()['id']}/documents"
        assert http.post(docs, json=_doc("before")).status_code == 201
        assert http.get(READY).json() == {"status": "ready"}

        data.rename(away)
        data.write_bytes(b"")  # a file where the directory was
        try:
            assert_problem(http.post(docs, json=_doc("lost")), 503, "storage_error")
            for _ in range(2):  # and it stays so, reads or not
                not_ready = assert_problem(http.get(READY), 503, "storage_error")
                assert "cannot write" in not_ready["detail"]
                assert str(data) not in not_ready["detail"]  # no server paths for clients
            # the answer is what the OpenAPI document says a 503 is
            problem = http.get("/schema/openapi.json").json()["components"]["schemas"]["Problem"]
            assert set(problem["required"]) <= set(not_ready) <= set(problem["properties"])
            assert http.get("/v1/health").status_code == 200  # alive, though not ready
            assert [d["title"] for d in http.get(docs).json()["documents"]] == ["before"]
        finally:
            data.unlink()
            away.rename(data)

        assert http.get(READY).status_code == 503  # until a write succeeds
        assert http.post(docs, json=_doc("after")).status_code == 201
        assert http.get(READY).json() == {"status": "ready"}
        titles = [d["title"] for d in http.get(docs).json()["documents"]]
        assert titles == ["before", "after"]


def test_the_openapi_document_gives_readiness_one_schema_per_answer(
    http: httpx.Client,
) -> None:
    document = http.get("/schema/openapi.json").json()
    responses = document["paths"][READY]["get"]["responses"]
    assert set(responses) >= {"200", "503"}
    schemas = document["components"]["schemas"]
    for status, media_type, name in (
        ("200", "application/json", "Readiness"),
        ("503", PROBLEM, "Problem"),
    ):
        content = responses[status]["content"]
        assert list(content) == [media_type], (status, content)
        # one schema, not a choice (``oneOf: [Readiness, {}]``) that any body would match
        assert content[media_type]["schema"] == {"$ref": f"#/components/schemas/{name}"}
        assert schemas[name]["type"] == "object"
    assert schemas["Readiness"]["required"] == ["status"]
    assert {"type", "title", "status", "detail", "code"} <= set(schemas["Problem"]["required"])
