"""``POST /v1/backups``: an online backup of a running durable server that opens on its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

import arrwdb
from arrwdb.server import BackgroundServer
from conftest import create_library


def test_a_backup_of_a_running_server_opens_on_its_own(
    make_server: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    live = make_server(storage="disk", data_dir=str(tmp_path / "data"))
    with httpx.Client(base_url=live.url, timeout=10.0) as http:
        lib = create_library(http, dimension=3, index="flat")
        for i in range(5):
            doc = {"title": f"d{i}", "chunks": [{"text": str(i), "embedding": [1.0, i, 0.5]}]}
            added = http.post(f"/v1/libraries/{lib['id']}/documents", json=doc)
            assert added.status_code == 201, added.text

        made = http.post("/v1/backups", json={"name": "nightly"})
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["name"] == "nightly"
        assert body["path"] == "backups/nightly"  # in the data directory: no server paths

        again = http.post("/v1/backups", json={"name": "nightly"})
        assert again.status_code == 409
        assert again.json()["code"] == "already_exists"
        bad = http.post("/v1/backups", json={"name": "../escape"})
        assert bad.status_code == 422
        assert bad.json()["code"] == "invalid_argument"
        unnamed = http.post("/v1/backups", json={})
        assert unnamed.status_code == 201
        assert unnamed.json()["name"].startswith("backup-")
        # the server goes on taking writes
        late_vec = [0.0, 1.0, 0.0]
        late = http.post(
            f"/v1/libraries/{lib['id']}/documents",
            json={"title": "late", "chunks": [{"text": "x", "embedding": late_vec}]},
        )
        assert late.status_code == 201

    with arrwdb.open(tmp_path / "data" / body["path"]) as copy:
        restored = copy.get_library(lib["name"])
        assert restored.document_count == 5
        assert restored.search([1.0, 2.0, 0.5], k=1)[0].document_title == "d2"


def test_an_in_memory_server_has_nothing_to_back_up(http: httpx.Client) -> None:
    response = http.post("/v1/backups", json={"name": "x"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_argument"
    assert "memory" in response.json()["detail"]


def test_backups_are_capped(make_server: Callable[..., BackgroundServer], tmp_path: Path) -> None:
    live = make_server(storage="disk", data_dir=str(tmp_path / "data"), max_backups=2)
    with httpx.Client(base_url=live.url, timeout=30) as http:
        assert http.post("/v1/backups", json={"name": "one"}).status_code == 201
        assert http.post("/v1/backups", json={"name": "two"}).status_code == 201
        third = http.post("/v1/backups", json={"name": "three"}).json()
        assert (third["status"], third["code"]) == (422, "limit_exceeded")
        assert "max_backups" in third["detail"]
