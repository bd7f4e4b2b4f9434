"""Filters as vectorised plans: a filter evaluated over a library's metadata columns at once.

``compile_filter`` (``filters``) turns a filter into a predicate over one chunk's metadata; this
module turns the same (already checked) filter into a **plan**, a small tree that
``_columns.MetadataColumns.mask`` evaluates with numpy over every chunk of a library in one pass,
with the semantics of ``filters`` exactly: typed equality (``True`` is not ``1``), numbers with
numbers and strings with strings (by code point), a missing field failing every test but
``$ne``/``$nin``/``$exists false``.

A plan leaves out nothing it cannot compute exactly: a filter with a list operand for ``$eq``
(whole-list equality) or an integer operand beyond 2**53 (not exact as a float) has no plan
(``None``), and the predicate is evaluated per chunk as before. List-valued (and other
irregular) metadata values are the columns' business: they are marked, and those chunks are
checked with the predicate.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any, Final

#: The largest integer magnitude a float64 holds exactly (every smaller one too).
EXACT_INT: Final = 2**53

#: A plan node. ``("and", (nodes...))``, ``("or", (nodes...))``, ``("not", node)``,
#: ``("all",)``, ``("none",)``, ``("eq", field, scalar)``, ``("in", field, (scalars...))``,
#: ``("cmp", field, op, number or string)``, ``("exists", field, bool)``.
Plan = tuple[Any, ...]

_ALL: Final[Plan] = ("all",)
_NONE: Final[Plan] = ("none",)


class _NoPlan(Exception):
    """The filter has a part a plan cannot compute exactly."""


def plan_filter(spec: Mapping[str, Any]) -> Plan | None:
    """The plan of a filter that ``compile_filter`` accepted, or ``None`` if it has a part
    (a whole-list ``$eq``, an integer beyond 2**53) a vectorised plan would not get exactly."""
    try:
        return _conjunction([_node(k, v) for k, v in spec.items()])
    except _NoPlan:
        return None


def plan_fields(plan: Plan) -> set[str]:
    """The metadata fields a plan reads."""
    kind = plan[0]
    if kind in ("and", "or"):
        out: set[str] = set()
        for part in plan[1]:
            out |= plan_fields(part)
        return out
    if kind == "not":
        return plan_fields(plan[1])
    if kind in ("all", "none"):
        return set()
    return {plan[1]}


def _node(key: str, value: Any) -> Plan:
    if key == "$and":
        return _conjunction(
            [_conjunction([_node(k, v) for k, v in item.items()]) for item in value]
        )
    if key == "$or":
        return ("or", tuple(_conjunction([_node(k, v) for k, v in item.items()]) for item in value))
    if key == "$not":
        return ("not", _conjunction([_node(k, v) for k, v in value.items()]))
    if not isinstance(value, Mapping):
        return _equals(key, value)
    return _conjunction([_operator(key, op, operand) for op, operand in value.items()])


def _conjunction(parts: list[Plan]) -> Plan:
    parts = [p for p in parts if p != _ALL]
    if not parts:
        return _ALL
    return parts[0] if len(parts) == 1 else ("and", tuple(parts))


def _operator(field: str, op: str, operand: Any) -> Plan:
    if op == "$eq":
        return _equals(field, operand)
    if op == "$ne":
        return ("not", _equals(field, operand))
    if op in ("$gt", "$gte", "$lt", "$lte"):
        _exact(operand)
        return ("cmp", field, op, operand)
    if op == "$in":
        return _is_in(field, operand)
    if op == "$nin":
        return ("not", _is_in(field, operand))
    if op == "$exists":
        return ("exists", field, bool(operand))
    raise _NoPlan(op)  # (compile_filter refuses it first)


def _equals(field: str, operand: Any) -> Plan:
    if isinstance(operand, list | tuple):
        raise _NoPlan("$eq with a list")
    _exact(operand)
    return ("eq", field, operand)


def _is_in(field: str, operand: Any) -> Plan:
    for item in operand:
        _exact(item)
    return ("in", field, tuple(operand)) if operand else _NONE


def _exact(value: Any) -> None:
    if is_number(value) and isinstance(value, int) and abs(value) > EXACT_INT:
        raise _NoPlan("an integer beyond 2**53")


def is_number(value: object) -> bool:
    """A number of the filter language: an ``int`` or ``float`` (or another real), never a
    ``bool``."""
    kind = type(value)
    if kind is int or kind is float:
        return True
    return kind is not bool and isinstance(value, numbers.Real)
