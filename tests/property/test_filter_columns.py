"""Filters evaluated over metadata columns (``MetadataColumns.mask``) against the oracle.

The columns are made at a random moment and then follow adds, metadata refreshes and removals;
after every step the mask must be, label by label, what the oracle of ``test_filters_oracle``
says of each live chunk's metadata (dead labels never pass). Values include integers beyond
2**53 and lists, which the columns leave to the predicate; a library-level test checks the same
through a real in-process library's filtered searches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from test_filters_oracle import FIELDS, comparable, filters, oracle, scalars

import arrwdb
from arrwdb.domain._columns import MetadataColumns
from arrwdb.domain.filters import compile_filter, plan_of

big = st.sampled_from([2**53, 2**53 + 1, -(2**60), 2**63 - 1, 9007199254740993.0])
column_values = st.one_of(scalars, big, st.lists(st.one_of(scalars, big), max_size=3))
rows = st.dictionaries(st.sampled_from(FIELDS), column_values, max_size=len(FIELDS))
steps = st.one_of(
    st.tuples(st.just("add"), st.lists(rows, min_size=1, max_size=6)),
    st.tuples(st.just("refresh"), st.integers(0, 10_000), rows),
    st.tuples(st.just("remove"), st.integers(0, 10_000)),
    st.tuples(st.just("mask")),
)
# what a library stores: numbers are finite
finite = st.one_of(
    st.integers(-2, 2),
    st.sampled_from([0.0, -0.0, 1.0, 1.5, 2.0, 2**53 + 1, -(2**60)]),
    st.sampled_from(["", "a", "b", "ab", "B", "é"]),
    st.booleans(),
    st.none(),
)
stored_rows = st.dictionaries(
    st.sampled_from(FIELDS), st.one_of(finite, st.lists(finite, max_size=3)), max_size=len(FIELDS)
)
big_filters = st.one_of(
    filters,
    # one operator on one field, so that each meets equal, smaller and larger values often
    st.builds(
        lambda f, op, x: {f: {op: [x] if op in ("$in", "$nin") else x}},
        st.sampled_from(FIELDS),
        st.sampled_from(["$eq", "$ne", "$in", "$nin"]),
        scalars,
    ),
    st.builds(
        lambda f, op, x: {f: {op: x}},
        st.sampled_from(FIELDS),
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
        comparable,
    ),
    st.builds(lambda f, x: {f: x}, st.sampled_from(FIELDS), big),
    st.builds(
        lambda f, op, x: {f: {op: x}},
        st.sampled_from(FIELDS),
        st.sampled_from(["$gt", "$lte", "$in", "$ne"]),
        big,
    ).map(lambda s: {k: ({"$in": [v["$in"]]} if "$in" in v else v) for k, v in s.items()}),
)


one_field_values = st.lists(st.one_of(column_values, st.just(None)), min_size=1, max_size=30)
one_operator = st.one_of(
    st.builds(
        lambda op, x: {"a": {op: [x] if op in ("$in", "$nin") else x}},
        st.sampled_from(["$eq", "$ne", "$in", "$nin"]),
        st.one_of(scalars, big),
    ),
    st.builds(
        lambda op, x: {"a": {op: x}},
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
        st.one_of(comparable, big),
    ),
    st.builds(lambda x: {"a": {"$exists": x}}, st.booleans()),
)


@settings(max_examples=1000)
@given(spec=one_operator, values=one_field_values, missing=st.sets(st.integers(0, 29)))
def test_each_operator_over_one_column(
    spec: dict[str, Any], values: list[Any], missing: set[int]
) -> None:
    """Every operator over one field holding every kind of value (some rows without it)."""
    rows = [{} if i in missing else {"a": v} for i, v in enumerate(values)]
    predicate = compile_filter(spec)
    plan = plan_of(predicate)
    if plan is None:  # an integer operand beyond 2**53: evaluated per chunk, never planned
        assert any(isinstance(x, int) and abs(x) > 2**53 for x in _operands(spec))
        return
    mask = MetadataColumns().mask(plan, predicate, len(rows), rows.__getitem__)
    assert mask.tolist() == [oracle(spec, m) for m in rows], (spec, rows)


def _operands(spec: dict[str, Any]) -> list[Any]:
    (clause,) = spec["a"].values()
    return clause if isinstance(clause, list) else [clause]


@settings(max_examples=400)
@given(spec=big_filters, script=st.lists(steps, max_size=12))
def test_the_mask_is_the_oracle_after_every_step(spec: dict[str, Any], script: list[Any]) -> None:
    predicate = compile_filter(spec)
    plan = plan_of(predicate)
    live: list[dict[str, Any] | None] = []
    columns = MetadataColumns()
    made = False

    def check() -> None:
        assert plan is not None
        mask = columns.mask(plan, predicate, len(live), live.__getitem__)
        expected = [m is not None and oracle(spec, m) for m in live]
        assert mask.tolist() == expected, (spec, live)

    for step in [*script, ("mask",)]:
        if step[0] == "add":
            columns.extend(len(live), step[1])
            live.extend(step[1])
        elif step[0] == "refresh" and live:
            label = step[1] % len(live)
            if live[label] is not None:
                live[label] = step[2]
                columns.refresh([label], [step[2]])
        elif step[0] == "remove" and live:
            label = step[1] % len(live)
            live[label] = None
            columns.remove(np.asarray([label], dtype=np.int64))
        if plan is not None and (made or step[0] == "mask"):
            made = True
            check()


@settings(max_examples=60, deadline=None)
@given(
    spec=filters,
    docs=st.lists(stored_rows, min_size=1, max_size=25),
    patches=st.lists(st.tuples(st.integers(0, 100), stored_rows), max_size=4),
    deletes=st.lists(st.integers(0, 100), max_size=4),
)
def test_filtered_search_of_a_library_follows_its_writes(
    spec: dict[str, Any],
    docs: list[dict[str, Any]],
    patches: list[tuple[int, dict[str, Any]]],
    deletes: list[int],
) -> None:
    """A filtered exact search returns exactly the live chunks the oracle passes, after a
    first filtered search (the columns are made) and then metadata merges and deletes."""
    with arrwdb.open() as db:
        lib = db.create_library("f", dimension=2, index="flat", embedder=None)
        ids = [f"d{i}" for i in range(len(docs))]
        lib.add_documents(
            [
                {
                    "id": i,
                    "title": "t",
                    "metadata": m,
                    "chunks": [{"text": "x", "embedding": [1, 0]}],
                }
                for i, m in zip(ids, docs, strict=True)
            ]
        )
        current: dict[str, dict[str, Any]] = dict(zip(ids, docs, strict=True))

        def found() -> set[str]:
            hits = lib.search([1.0, 0.0], k=100, filter=spec)
            return {h.document_id for h in hits}

        assert found() == {d for d, m in current.items() if oracle(spec, m)}
        for n, metadata in patches:
            doc_id = ids[n % len(ids)]
            if doc_id in current:  # a merge: a key set to None is removed
                lib.update_document(doc_id, metadata=metadata)
                merged = dict(current[doc_id])
                for key, value in metadata.items():
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                current[doc_id] = merged
        for n in deletes:
            doc_id = ids[n % len(ids)]
            if doc_id in current:
                lib.delete_document(doc_id)
                del current[doc_id]
        assert found() == {d for d, m in current.items() if oracle(spec, m)}
        for n, metadata in patches:  # new documents after a search of the filter
            doc_id = f"n{n}-{len(current)}"
            chunk = {"text": "x", "embedding": [1, 0]}
            lib.add_document(title="t", metadata=metadata, chunks=[chunk], id=doc_id)
            current[doc_id] = dict(metadata)
            assert found() == {d for d, m in current.items() if oracle(spec, m)}
