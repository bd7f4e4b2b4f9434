"""A library created with ``embedder: null`` takes vectors only: text to embed (a query, a
document's text, a chunk without an embedding) is 422 ``embedder_required`` on every way in,
never a silent fallback to another embedder; leaving ``embedder`` out takes the default."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import websockets.sync.client as ws_client

import arrwdb
from arrwdb.domain.errors import EmbedderRequiredError
from arrwdb.server import BackgroundServer

VECTOR_DOC = {"title": "v", "chunks": [{"text": "t", "embedding": [1.0, 0.0, 0.0]}]}


def test_in_process() -> None:
    with arrwdb.open() as db:
        lib = db.create_library("vectors", dimension=3, embedder=None)
        assert lib.info.embedder is None
        lib.add_document(title="v", chunks=[{"text": "t", "embedding": [1.0, 0.0, 0.0]}])
        assert len(lib.search([1.0, 0.0, 0.0], k=1)) == 1
        with pytest.raises(EmbedderRequiredError) as info:
            lib.search("some words", k=1)
        assert info.value.details["field"] == "query_text"
        with pytest.raises(EmbedderRequiredError):
            lib.add_document(title="t", text="some words")
        with pytest.raises(EmbedderRequiredError):
            lib.add_document(title="t", chunks=[{"text": "no vector"}])
        assert db.create_library("texts").info.embedder == "hashing"  # left out: the default


def test_rest_ndjson_and_websocket(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        made = http.post(
            "/v1/libraries", json={"name": uuid.uuid4().hex, "dimension": 3, "embedder": None}
        )
        assert made.status_code == 201
        assert made.json()["embedder"] is None
        lib = made.json()["id"]
        default = http.post("/v1/libraries", json={"name": uuid.uuid4().hex}).json()
        assert default["embedder"] == "hashing"
        assert http.post(f"/v1/libraries/{lib}/documents", json=VECTOR_DOC).status_code == 201

        def refused(response: httpx.Response, field: str) -> None:
            body: dict[str, Any] = response.json()
            assert (response.status_code, body["code"], body["field"]) == (
                422,
                "embedder_required",
                field,
            )

        refused(http.post(f"/v1/libraries/{lib}/search", json={"query_text": "x"}), "query_text")
        refused(
            http.post(f"/v1/libraries/{lib}/documents", json={"title": "t", "text": "x"}), "text"
        )
        refused(
            http.post(
                f"/v1/libraries/{lib}/documents", json={"title": "t", "chunks": [{"text": "x"}]}
            ),
            "chunks[0].embedding",
        )
        lines = [json.dumps(VECTOR_DOC), json.dumps({"title": "t", "text": "x"})]
        streamed = http.post(
            f"/v1/libraries/{lib}/documents/stream",
            content="\n".join(lines) + "\n",
            headers={"content-type": "application/x-ndjson"},
        )
        answers = [json.loads(line) for line in streamed.text.splitlines()]
        assert [a.get("success") for a in answers[:2]] == [True, False]
        assert answers[1]["code"] == "embedder_required"
        searched = http.post(
            f"/v1/libraries/{lib}/search/stream",
            content=json.dumps({"query_text": "x"}) + "\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert json.loads(searched.text.splitlines()[0])["code"] == "embedder_required"
    with ws_client.connect(f"{server.ws_url}/v1/libraries/{lib}/ws") as ws:
        json.loads(ws.recv())
        ws.send(
            json.dumps(
                {
                    "type": "request",
                    "action": "search",
                    "request_id": 1,
                    "data": {"query_text": "x"},
                }
            )
        )
        answer = json.loads(ws.recv())
        assert (answer["success"], answer["code"]) == (False, "embedder_required")
