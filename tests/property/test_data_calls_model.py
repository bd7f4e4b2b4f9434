"""The data calls of the in-process API against a plain-Python model of a library's documents
(``data_calls_model``): upserts, reads by ids and filter, counts, deletes by ids and filter and
merge-patched metadata give what the model gives, with the events it expects."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from hypothesis import settings

import arrwdb
from arrwdb.domain.errors import DocumentNotFoundError
from data_calls_model import DIM, DataCallsMachine, Metadata, Seen, embedding


class InProcess:
    def __init__(self) -> None:
        self.db = arrwdb.open()
        self.lib = self.db.create_library(
            uuid.uuid4().hex, dimension=DIM, index="flat", embedder=None
        )
        self.sub = self.db.service.subscribe(self.lib.id)

    def events(self) -> list[tuple[str, str]]:
        out = []
        while (event := self.sub.poll()) is not None:
            out.append((event.type, event.data["document_id"]))
        return out

    @staticmethod
    def _chunks(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
        text = f"{doc['id']} {doc['title']}"
        return [{"text": text, "embedding": embedding(text)}]

    def upsert(self, doc: Mapping[str, Any]) -> tuple[bool, list[tuple[str, str]]]:
        existed = doc["id"] in {d.id for d in self.lib.get_documents([doc["id"]])}
        saved = self.lib.upsert_document(
            doc["id"], doc["title"], chunks=self._chunks(doc), metadata=doc["metadata"]
        )
        assert (saved.id, saved.title, saved.metadata) == (doc["id"], doc["title"], doc["metadata"])
        return not existed, self.events()

    def upsert_many(self, docs: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
        self.lib.upsert_documents([{**d, "chunks": self._chunks(d)} for d in docs])
        return self.events()

    def get(self, ids: list[str]) -> list[Seen]:
        page = self.lib.get_documents(ids)
        assert page.next_cursor is None
        return [(d.id, d.title, dict(d.metadata)) for d in page.documents]

    def query(self, filter: Mapping[str, Any], limit: int) -> list[list[Seen]]:
        pages: list[list[Seen]] = []
        cursor = None
        while True:
            page = self.lib.query_documents(filter=filter, limit=limit, cursor=cursor)
            assert all(d.chunks == () for d in page)
            pages.append([(d.id, d.title, dict(d.metadata)) for d in page])
            cursor = page.next_cursor
            if cursor is None:
                return pages

    def count(self, filter: Mapping[str, Any] | None) -> int:
        return self.lib.count(filter)

    def delete(
        self, ids: list[str] | None, filter: Mapping[str, Any] | None
    ) -> tuple[int, list[tuple[str, str]]]:
        before = self.db.service.last_event_id
        deleted = self.lib.delete_documents(ids, filter=filter)
        after = self.db.service.last_event_id
        assert after - before == deleted  # one event each (one commit: checked in the unit tests)
        return deleted, self.events()

    def patch(
        self, document_id: str, patch: Mapping[str, Any]
    ) -> tuple[Metadata | None, list[tuple[str, str]]]:
        try:
            doc = self.lib.update_document(document_id, metadata=patch)
        except DocumentNotFoundError:
            return None, self.events()
        assert dict(self.lib.get_document(document_id).metadata) == dict(doc.metadata)
        return dict(doc.metadata), self.events()

    def close(self) -> None:
        self.sub.close()
        self.db.close()


class InProcessMachine(DataCallsMachine):
    def make_driver(self) -> InProcess:
        return InProcess()

    def teardown(self) -> None:
        assert isinstance(self.driver, InProcess)
        self.driver.close()


TestInProcess = InProcessMachine.TestCase
TestInProcess.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
