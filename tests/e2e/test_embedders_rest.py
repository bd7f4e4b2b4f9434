"""Embedders over REST: a library created with ``"embedder": "minilm"`` embeds its documents'
text and the questions asked of it with the real model; a server whose default is ``minilm``
makes it the embedder of libraries that name none; an unknown name is a 422 naming the known."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import embed_model
from arrwdb.server import BackgroundServer

DOCUMENTS = [
    {
        "id": "cats",
        "title": "cats",
        "text": "Cats are small furry animals that people keep as pets.",
    },
    {"id": "stocks", "title": "markets", "text": "The stock market fell sharply this morning."},
    {"id": "rain", "title": "weather", "text": "Heavy rain and strong wind are expected tonight."},
]


def search(http: httpx.Client, library_id: str, text: str) -> list[dict[str, Any]]:
    response = http.post(f"/v1/libraries/{library_id}/search", json={"query_text": text, "k": 3})
    assert response.status_code == 200, response.text
    hits: list[dict[str, Any]] = response.json()["results"]
    return hits


def test_a_minilm_library_embeds_and_searches_text(http: httpx.Client) -> None:
    embed_model.require()
    made = http.post(
        "/v1/libraries", json={"name": uuid.uuid4().hex, "embedder": "minilm", "index": "flat"}
    )
    assert made.status_code == 201, made.text
    library = made.json()
    assert (library["embedder"], library["dimension"]) == ("minilm", 384)
    added = http.post(f"/v1/libraries/{library['id']}/documents", json=DOCUMENTS)
    assert added.status_code == 201, added.text
    # no word in common with the document found
    assert search(http, library["id"], "kitten")[0]["document_id"] == "cats"
    assert search(http, library["id"], "shares lost value")[0]["document_id"] == "stocks"
    assert search(http, library["id"], "a storm is coming")[0]["document_id"] == "rain"
    stored = http.get(
        f"/v1/libraries/{library['id']}/documents/cats", params={"include_embedding": "true"}
    ).json()
    embedding = stored["chunks"][0]["embedding"]
    assert len(embedding) == 384
    assert sum(x * x for x in embedding) == pytest.approx(1.0, abs=1e-4)


def test_minilm_as_the_servers_default(make_server: Callable[..., BackgroundServer]) -> None:
    embed_model.require()
    live = make_server(default_embedder="minilm")
    with httpx.Client(base_url=live.url, timeout=30) as http:
        library = http.post("/v1/libraries", json={"name": "default"}).json()
        assert (library["embedder"], library["dimension"]) == ("minilm", 384)
        hashing = http.post("/v1/libraries", json={"name": "h", "embedder": "hashing"}).json()
        assert hashing["embedder"] == "hashing"


def test_an_unknown_embedder_is_a_422_naming_the_known_ones(http: httpx.Client) -> None:
    response = http.post("/v1/libraries", json={"name": uuid.uuid4().hex, "embedder": "nope"})
    assert response.status_code == 422
    body = response.json()
    assert (body["code"], body["field"]) == ("invalid_argument", "embedder")
    assert "hashing, minilm" in body["detail"]
