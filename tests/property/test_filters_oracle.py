"""The compiled metadata filters against a slow, obvious reference evaluator (the oracle).

The oracle below is written from the language's definition in ``arrwdb.domain.filters`` and
shares no code with it. Hypothesis generates metadata (numbers, strings, booleans, null, lists,
missing fields) and nested filters using every operator and combinator over a small vocabulary,
so that equal, unequal and mistyped values all meet often.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from arrwdb.domain.errors import InvalidFilterError, ValidationError
from arrwdb.domain.filters import MATCH_ALL, compile_filter, filter_fields

# --- the oracle ------------------------------------------------------------------------------

MISSING = object()


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def same(a: Any, b: Any) -> bool:
    """Typed equality: lists item by item, bools only with bools, numbers with numbers."""
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is None and b is None
    if is_number(a) and is_number(b):
        return bool(a == b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return False


def elements(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def compares(element: Any, op: str, x: Any) -> bool:
    comparable = (is_number(element) and is_number(x)) or (
        isinstance(element, str) and isinstance(x, str)
    )
    if not comparable:
        return False
    if op == "$gt":
        return bool(element > x)
    if op == "$gte":
        return bool(element >= x)
    if op == "$lt":
        return bool(element < x)
    return bool(element <= x)


def eq(value: Any, x: Any) -> bool:
    if value is MISSING:
        return False
    if same(value, x):
        return True
    return isinstance(value, list) and any(same(e, x) for e in value)


def is_in(value: Any, xs: list[Any]) -> bool:
    if value is MISSING:
        return False
    return any(same(e, x) for e in elements(value) for x in xs)


def operator_holds(value: Any, op: str, x: Any) -> bool:
    if op == "$eq":
        return eq(value, x)
    if op == "$ne":
        return not eq(value, x)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return value is not MISSING and any(compares(e, op, x) for e in elements(value))
    if op == "$in":
        return is_in(value, x)
    if op == "$nin":
        return not is_in(value, x)
    if op == "$exists":
        return (value is not MISSING) is x
    raise AssertionError(op)


def oracle(spec: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    for key, clause in spec.items():
        if key == "$and":
            holds = all(oracle(f, metadata) for f in clause)
        elif key == "$or":
            holds = any(oracle(f, metadata) for f in clause)
        elif key == "$not":
            holds = not oracle(clause, metadata)
        else:
            value = metadata.get(key, MISSING)
            if isinstance(clause, dict):
                holds = all(operator_holds(value, op, x) for op, x in clause.items())
            else:
                holds = eq(value, clause)
        if not holds:
            return False
    return True


# --- strategies ------------------------------------------------------------------------------

FIELDS = ["a", "b", "n", "tags"]
# Few distinct numbers, so that equal values (1 and 1.0, 0.0 and -0.0) meet often.
numbers = st.one_of(
    st.integers(-2, 2),
    st.sampled_from([0.0, -0.0, 1.0, 1.5, 2.0, math.inf, -math.inf, math.nan]),
)
strings = st.sampled_from(["", "a", "b", "ab", "B", "é", "1", "true"])
scalars = st.one_of(numbers, strings, st.booleans(), st.none())
values = st.one_of(scalars, st.lists(scalars, max_size=4))
metadata_dicts = st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS))

comparable = st.one_of(numbers, strings)
operator_clauses = st.one_of(
    st.tuples(st.sampled_from(["$eq", "$ne"]), values),
    st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), comparable),
    st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(scalars, max_size=4)),
    st.tuples(st.just("$exists"), st.booleans()),
)
field_clauses = st.one_of(
    values,  # bare equality
    st.lists(operator_clauses, min_size=1, max_size=3, unique_by=lambda c: c[0]).map(dict),
)
field_filters = st.dictionaries(st.sampled_from(FIELDS), field_clauses, max_size=3)


def _extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    combinator = st.one_of(
        st.builds(lambda fs: {"$and": fs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda fs: {"$or": fs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda f: {"$not": f}, children),
    )
    return st.one_of(combinator, st.builds(lambda c, f: {**f, **c}, combinator, field_filters))


filters = st.recursive(field_filters, _extend, max_leaves=8)


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=1500)
@given(spec=filters, metadata=metadata_dicts)
@example(spec={"tags": {"$ne": "a"}}, metadata={"tags": ["b", "a"]})
@example(spec={"n": True}, metadata={"n": 1})
@example(spec={"n": 1}, metadata={"n": [True, 1.0]})
@example(spec={"n": {"$in": [math.nan]}}, metadata={"n": math.nan})
@example(spec={"tags": ["a", "b"]}, metadata={"tags": ["a", "b"]})
@example(spec={"n": {"$gt": 1, "$lt": 0}}, metadata={"n": [2, -1]})
@example(spec={"a": {"$eq": None}}, metadata={})
def test_compiled_filter_agrees_with_the_oracle(
    spec: dict[str, Any], metadata: dict[str, Any]
) -> None:
    assert compile_filter(spec)(metadata) == oracle(spec, metadata)


@settings(max_examples=1000)
@given(clause=operator_clauses, value=st.one_of(values, st.just(MISSING)))
def test_each_operator_agrees_with_the_oracle(clause: tuple[str, Any], value: Any) -> None:
    spec = {"f": dict([clause])}
    metadata = {} if value is MISSING else {"f": value}
    assert compile_filter(spec)(metadata) == oracle(spec, metadata)


@given(spec=filters, metadata=metadata_dicts, noise=values)
def test_only_the_fields_named_matter(
    spec: dict[str, Any], metadata: dict[str, Any], noise: Any
) -> None:
    fields = filter_fields(spec)
    assert fields <= set(FIELDS)
    predicate = compile_filter(spec)
    touched = {k: v for k, v in metadata.items() if k in fields}
    untouched = {**touched, **{f"other_{k}": noise for k in FIELDS}}
    assert predicate(metadata) == predicate(touched) == predicate(untouched)


CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"year": 2017}, {"year": 2017}, True),
    ({"year": 2017}, {"year": 2017.0}, True),
    ({"year": 2017}, {"year": "2017"}, False),
    ({"flag": True}, {"flag": 1}, False),
    ({"flag": 1}, {"flag": True}, False),
    ({"x": None}, {"x": None}, True),
    ({"x": None}, {}, False),
    ({"x": {"$ne": None}}, {}, True),
    ({"tags": "ml"}, {"tags": ["nlp", "ml"]}, True),
    ({"tags": ["nlp", "ml"]}, {"tags": ["nlp", "ml"]}, True),
    ({"tags": ["ml", "nlp"]}, {"tags": ["nlp", "ml"]}, False),
    ({"tags": {"$ne": "ml"}}, {"tags": ["nlp", "ml"]}, False),
    ({"tags": {"$in": ["cv", "ml"]}}, {"tags": ["nlp", "ml"]}, True),
    ({"tags": {"$nin": ["cv", "ml"]}}, {"tags": ["nlp", "ml"]}, False),
    ({"tags": {"$nin": ["cv"]}}, {}, True),
    ({"year": {"$gte": 2015, "$lt": 2020}}, {"year": 2017}, True),
    ({"year": {"$gt": 2015}}, {"year": "2017"}, False),
    ({"year": {"$gt": 2015}}, {"year": True}, False),
    ({"year": {"$lte": 2015}}, {}, False),
    ({"name": {"$lt": "b"}}, {"name": "abc"}, True),
    ({"scores": {"$gt": 0.9}}, {"scores": [0.1, 0.95]}, True),
    ({"year": {"$exists": True}}, {"year": None}, True),
    ({"year": {"$exists": False}}, {"year": None}, False),
    ({"$or": [{"a": 1}, {"b": 2}]}, {"b": 2}, True),
    ({"$and": [{"a": 1}, {"b": 2}]}, {"b": 2}, False),
    ({"$not": {"a": 1}}, {"a": 2}, True),
    ({"a": 1, "$not": {"b": 2}}, {"a": 1, "b": 2}, False),
    ({"$not": {}}, {"a": 1}, False),
]


@pytest.mark.parametrize(("spec", "metadata", "expected"), CASES)
def test_documented_examples(
    spec: dict[str, Any], metadata: dict[str, Any], expected: bool
) -> None:
    assert compile_filter(spec)(metadata) is expected
    assert oracle(spec, metadata) is expected


@pytest.mark.parametrize("spec", [None, {}, {"$and": [{}]}, {"$or": [{"a": 1}, {}]}])
def test_filters_that_match_everything_compile_to_match_all(spec: Any) -> None:
    assert compile_filter(spec) is MATCH_ALL
    assert MATCH_ALL({"anything": 1})


def test_filter_fields() -> None:
    spec = {"a": 1, "$or": [{"b": {"$gt": 1}}, {"$not": {"c": {"$exists": True}}}]}
    assert filter_fields(spec) == frozenset({"a", "b", "c"})
    assert filter_fields(None) == frozenset()


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"$regex": "a.*"}, "'$regex'"),
        ({"$nor": [{"a": 1}]}, "'$nor'"),
        ({"a": {"$regex": "x"}}, "'$regex'"),
        ({"a": {"$gt": 1, "$size": 2}}, "'$size'"),
        ({"a": {"$or": [{"$eq": 1}]}}, "'$or'"),
        ({"$or": [{"a": {"$elemMatch": {}}}]}, "'$elemMatch'"),
    ],
)
def test_unknown_operators_are_named(spec: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidFilterError, match="unknown filter operator") as info:
        compile_filter(spec)
    assert named in str(info.value)
    assert info.value.code == "invalid_filter"
    assert isinstance(info.value, ValidationError)


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"a": {"$in": "abc"}}, "'$in'"),
        ({"a": {"$in": 1}}, "'$in'"),
        ({"a": {"$nin": {"x": 1}}}, "'$nin'"),
        ({"a": {"$in": [[1, 2]]}}, "'$in'"),
        ({"a": {"$in": [{"x": 1}]}}, "'$in'"),
        ({"$and": []}, "'$and'"),
        ({"$and": {"a": 1}}, "'$and'"),
        ({"$and": [{"a": 1}, 3]}, "'$and'"),
        ({"$or": []}, "'$or'"),
        ({"$or": "a"}, "'$or'"),
        ({"$not": [{"a": 1}]}, "'$not'"),
        ({"$not": None}, "'$not'"),
        ({"a": {"$exists": 1}}, "'$exists'"),
        ({"a": {"$exists": "true"}}, "'$exists'"),
        ({"a": {"$gt": True}}, "'$gt'"),
        ({"a": {"$gte": None}}, "'$gte'"),
        ({"a": {"$lt": [1]}}, "'$lt'"),
        ({"a": {"$lte": {"x": 1}}}, "'$lte'"),
        ({"a": {"x": 1}}, "'a'"),
        ({"a": {"$eq": 1, "x": 1}}, "'a'"),
        ({"a": {"$eq": {"x": 1}}}, "'a'"),
        ({"a": {"$ne": {"$gt": 1}}}, "'a'"),
        ({"a": {}}, "'a'"),
        ({"a": [1, [2]]}, "'a'"),
        ({"a": date(2020, 1, 1)}, "'a'"),
        ({"a": {1, 2}}, "'a'"),
        ({"$and": [{"ok": 1}, {"deep": {"$in": 5}}]}, "'deep'"),
    ],
)
def test_bad_operands_name_the_operator_or_field(spec: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidFilterError) as info:
        compile_filter(spec)
    assert named in str(info.value)


@pytest.mark.parametrize("spec", [[{"a": 1}], "a == 1", 3, {1: 2}])
def test_a_filter_must_be_an_object_with_string_keys(spec: Any) -> None:
    with pytest.raises(InvalidFilterError):
        compile_filter(spec)


def test_errors_are_raised_at_compile_time_even_in_unreached_branches() -> None:
    with pytest.raises(InvalidFilterError, match=r"\$bogus"):
        compile_filter({"$or": [{}, {"a": {"$bogus": 1}}]})
