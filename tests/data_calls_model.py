"""A plain-Python model of a library's documents (an ordered dict) and a hypothesis state
machine that drives the data calls (upsert, get by ids, query and count by filter, delete by
ids or filter, merge-patched metadata) through a ``Driver`` and checks every answer, and the
events each write leaves, against the model.

``tests/property/test_data_calls_model.py`` drives the in-process API with it,
``tests/e2e/test_rest_data_calls_model.py`` the REST API of a real server.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

DIM = 4
IDS = [f"doc-{i}" for i in range(8)]
COLORS = ["red", "blue"]
TAGS = ["a", "b", "c"]

Metadata = dict[str, Any]
#: what the model and the drivers compare of a document
Seen = tuple[str, str, Metadata]  # (id, title, metadata)


def embedding(text: str) -> list[float]:
    """A deterministic, never-zero vector for a text."""
    digest = hashlib.sha256(text.encode()).digest()
    return [1.0 + digest[i] / 255.0 for i in range(DIM)]


# -- strategies -------------------------------------------------------------------------------

metadata_values = {
    "color": st.sampled_from(COLORS),
    "n": st.integers(0, 3),
    "tags": st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
}
metadata = st.fixed_dictionaries({}, optional=metadata_values)
#: a merge patch: a key set to None is removed
patches = st.fixed_dictionaries(
    {}, optional={key: st.none() | value for key, value in metadata_values.items()}
)
_leaf_filters = st.one_of(
    st.sampled_from(COLORS).map(lambda c: {"color": c}),
    st.integers(0, 3).map(lambda n: {"n": {"$gte": n}}),
    st.booleans().map(lambda b: {"color": {"$exists": b}}),
    st.sampled_from(TAGS).map(lambda t: {"tags": {"$in": [t]}}),
)
filters = st.one_of(
    st.just({}),
    _leaf_filters,
    st.lists(_leaf_filters, min_size=2, max_size=2).map(lambda fs: {"$or": fs}),
)
documents = st.fixed_dictionaries(
    {"id": st.sampled_from(IDS), "title": st.sampled_from(["t1", "t2", "t3"]), "metadata": metadata}
)


def matches(spec: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """The filters of ``filters``, evaluated the plain way."""
    for key, clause in spec.items():
        if key == "$or":
            if not any(matches(f, meta) for f in clause):
                return False
        elif key == "color" and isinstance(clause, dict):
            if ("color" in meta) != clause["$exists"]:
                return False
        elif key == "color":
            if meta.get("color") != clause:
                return False
        elif key == "n":
            if not (isinstance(meta.get("n"), int) and meta["n"] >= clause["$gte"]):
                return False
        elif key == "tags":
            if not set(meta.get("tags", [])) & set(clause["$in"]):
                return False
        else:
            raise AssertionError(f"no such filter in the model: {key}")
    return True


# -- what a driver does -----------------------------------------------------------------------


class Driver(Protocol):
    """One way in. Every write returns the ``(type, document_id)`` of the events it made."""

    def upsert(self, doc: Mapping[str, Any]) -> tuple[bool, list[tuple[str, str]]]:
        """``(created, events)``."""
        ...

    def upsert_many(self, docs: list[Mapping[str, Any]]) -> list[tuple[str, str]]: ...

    def get(self, ids: list[str]) -> list[Seen]: ...

    def query(self, filter: Mapping[str, Any], limit: int) -> list[list[Seen]]:
        """Every page, following ``next_cursor``."""
        ...

    def count(self, filter: Mapping[str, Any] | None) -> int: ...

    def delete(
        self, ids: list[str] | None, filter: Mapping[str, Any] | None
    ) -> tuple[int, list[tuple[str, str]]]: ...

    def patch(
        self, document_id: str, patch: Mapping[str, Any]
    ) -> tuple[Metadata | None, list[tuple[str, str]]]:
        """The merged metadata (``None`` for an unknown document) and the events."""
        ...


class DataCallsMachine(RuleBasedStateMachine):
    """Subclasses set ``make_driver`` (and may ``close`` it in ``teardown``)."""

    def make_driver(self) -> Driver:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.driver = self.make_driver()
        self.model: dict[str, tuple[str, Metadata]] = {}  # id -> (title, metadata), in order

    def _seen(self, ids: list[str]) -> list[Seen]:
        return [(i, *self.model[i]) for i in ids]

    @rule(doc=documents)
    def upsert(self, doc: dict[str, Any]) -> None:
        created, events = self.driver.upsert(doc)
        assert created == (doc["id"] not in self.model)
        kind = "document.added" if created else "document.updated"
        assert events == [(kind, doc["id"])]
        self.model[doc["id"]] = (doc["title"], dict(doc["metadata"]))

    @rule(docs=st.lists(documents, min_size=1, max_size=4, unique_by=lambda d: d["id"]))
    def upsert_many(self, docs: list[dict[str, Any]]) -> None:
        events = self.driver.upsert_many(docs)
        expected = [
            ("document.updated" if d["id"] in self.model else "document.added", d["id"])
            for d in docs
        ]
        assert events == expected
        for d in docs:
            self.model[d["id"]] = (d["title"], dict(d["metadata"]))

    @rule(ids=st.lists(st.sampled_from([*IDS, "nope"]), max_size=5))
    def get(self, ids: list[str]) -> None:
        wanted = [i for i in dict.fromkeys(ids) if i in self.model]
        assert self.driver.get(ids) == self._seen(wanted)

    @rule(spec=filters, limit=st.integers(1, 4))
    def query(self, spec: dict[str, Any], limit: int) -> None:
        pages = self.driver.query(spec, limit)
        assert all(len(page) <= limit for page in pages)
        assert all(pages[:-1]), "only the last page may be empty"
        found = [doc for page in pages for doc in page]
        assert found == self._seen([i for i, (_, m) in self.model.items() if matches(spec, m)])

    @rule(spec=st.none() | filters)
    def count(self, spec: dict[str, Any] | None) -> None:
        expected = sum(1 for _, m in self.model.values() if spec is None or matches(spec, m))
        assert self.driver.count(spec) == expected

    @rule(ids=st.lists(st.sampled_from([*IDS, "nope"]), max_size=4))
    def delete_by_ids(self, ids: list[str]) -> None:
        gone = [i for i in dict.fromkeys(ids) if i in self.model]
        deleted, events = self.driver.delete(ids, None)
        assert deleted == len(gone)
        assert events == [("document.deleted", i) for i in gone]
        for i in gone:
            del self.model[i]

    @precondition(lambda self: len(self.model) > 0)
    @rule(spec=filters)
    def delete_by_filter(self, spec: dict[str, Any]) -> None:
        gone = [i for i, (_, m) in self.model.items() if matches(spec, m)]
        deleted, events = self.driver.delete(None, spec)
        assert deleted == len(gone)
        assert events == [("document.deleted", i) for i in gone]  # in listing order
        for i in gone:
            del self.model[i]

    @rule(document_id=st.sampled_from(IDS), patch=patches)
    def patch(self, document_id: str, patch: dict[str, Any]) -> None:
        merged, events = self.driver.patch(document_id, patch)
        if document_id not in self.model:
            assert (merged, events) == (None, [])
            return
        title, old = self.model[document_id]
        expected = {k: v for k, v in {**old, **patch}.items() if v is not None}
        assert merged == expected
        assert events == ([] if expected == old else [("document.updated", document_id)])
        self.model[document_id] = (title, expected)

    @invariant()
    def everything_listed(self) -> None:
        assert self.driver.count(None) == len(self.model)
