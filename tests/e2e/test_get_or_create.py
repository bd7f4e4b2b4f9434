"""Get-or-create a library: the existing one when it matches (nothing written, no event), a
409 naming what differs otherwise; in process and over REST (``?exist_ok=true``)."""

from __future__ import annotations

import uuid

import httpx
import pytest

import arrwdb
from arrwdb.domain.errors import AlreadyExistsError
from arrwdb.server import BackgroundServer


def test_in_process() -> None:
    with arrwdb.open() as db:
        made = db.get_or_create_library("papers", dimension=3, metric="l2")
        again = db.get_or_create_library("papers", dimension=3, metric="l2")
        assert again.id == made.id
        assert db.get_or_create_library("papers", metric="l2").id == made.id  # dimension not given
        with pytest.raises(AlreadyExistsError) as info:
            db.get_or_create_library("papers", metric="cosine")
        assert info.value.details["field"] == "metric"
        assert [e.type for e in db.get_library("papers").events(since="earliest", timeout=0.2)] == [
            "library.created"
        ]


def test_over_rest(server: BackgroundServer) -> None:
    name = uuid.uuid4().hex
    body = {"name": name, "dimension": 4, "index": "flat"}
    with httpx.Client(base_url=server.url) as http:
        made = http.post("/v1/libraries", params={"exist_ok": "true"}, json=body)
        assert made.status_code == 201
        again = http.post("/v1/libraries", params={"exist_ok": "true"}, json=body)
        assert again.status_code == 200
        assert again.json()["id"] == made.json()["id"]
        assert int(again.headers["arrwdb-event-id"]) >= int(made.headers["arrwdb-event-id"])
        differs = http.post(
            "/v1/libraries", params={"exist_ok": "true"}, json=body | {"index": "hnsw"}
        ).json()
        assert (differs["status"], differs["code"], differs["field"]) == (
            409,
            "already_exists",
            "index",
        )
        plain = http.post("/v1/libraries", json=body).json()  # without exist_ok: a taken name
        assert (plain["status"], plain["code"]) == (409, "already_exists")
        listed = [x["name"] for x in http.get("/v1/libraries").json()["libraries"]]
        assert listed.count(name) == 1
