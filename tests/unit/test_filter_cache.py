"""Compiled filters are kept by the filter's repr: equal filters share a predicate, filters
that differ only in an operand's type do not, and a caller's later edit of a list it passed
does not reach a kept predicate."""

from __future__ import annotations

from types import MappingProxyType

from arrwdb.domain.filters import compile_filter, plan_of


def test_an_equal_filter_gets_the_kept_predicate() -> None:
    first = compile_filter({"tag": 1, "year": {"$gte": 2020}})
    again = compile_filter({"tag": 1, "year": {"$gte": 2020}})
    assert again is first
    assert plan_of(again) == plan_of(first)


def test_operands_of_other_types_are_other_filters() -> None:
    one, true, real, text = (compile_filter({"x": v}) for v in (1, True, 1.0, "1"))
    assert len({id(one), id(true), id(real), id(text)}) == 4
    assert one({"x": 1})
    assert not one({"x": True})
    assert not one({"x": "1"})
    assert true({"x": True})
    assert not true({"x": 1})
    assert real({"x": 1})
    assert not real({"x": True})
    assert text({"x": "1"})
    assert not text({"x": 1})


def test_a_list_edited_after_compiling_does_not_change_the_kept_predicate() -> None:
    values = [1]
    before = compile_filter({"x": {"$in": values}})
    values.append(2)
    assert not before({"x": 2})  # the predicate took the list's items when compiled
    fresh = compile_filter({"x": {"$in": [1]}})
    assert fresh is before
    assert not fresh({"x": 2})
    widened = compile_filter({"x": {"$in": values}})
    assert widened is not before
    assert widened({"x": 2})


def test_a_mapping_that_is_not_a_dict_is_compiled_each_time() -> None:
    spec = MappingProxyType({"x": 3})
    first, again = compile_filter(spec), compile_filter(spec)
    assert first is not again
    assert first({"x": 3})
    assert again({"x": 3})
    assert not again({"x": 4})
