"""The metadata filter language: compiled once per query, evaluated per chunk.

A filter is a JSON object (a ``Mapping``) in the style of MongoDB queries. It is checked and
compiled by :func:`compile_filter` into nested closures, a :data:`Predicate` that takes one
chunk's metadata (a ``Mapping[str, Any]``) and answers ``True`` when the chunk matches.

Grammar::

    filter     := { key: clause, ... }            every key must hold (AND); {} matches all
    key/clause := "$and": [filter, ...]           every filter holds (non-empty list)
                | "$or":  [filter, ...]           at least one filter holds (non-empty list)
                | "$not": filter                  the filter does not hold
                | field: value                    same as  field: {"$eq": value}
                | field: { op: operand, ... }     every operator holds (AND); non-empty
    op         := $eq $ne $gt $gte $lt $lte $in $nin $exists
    value      := string | number | bool | null | [scalar, ...]

Fields are plain keys of the metadata mapping (a dot is not a path separator). A field's
value is *missing* when its key is absent; a key present with ``None`` is not missing.

Values and types. A *number* is an ``int`` or ``float`` (or another ``numbers.Real``) but
never a ``bool``. Equality is typed: numbers equal numbers (``1 == 1.0``), strings equal
strings, ``True``/``False`` equal only themselves (``True`` does not equal ``1``), ``None``
equals only ``None``; any other pairing is unequal, and NaN equals nothing. Comparisons
(``$gt $gte $lt $lte``) take a number or a string; a number is compared with numbers and a
string with strings (lexicographically, by code point); a value of another type never
satisfies a comparison, and no comparison ever raises ``TypeError``.

Operators, for a field whose metadata value is a scalar ``v``:

* ``$eq x``: ``v`` equals ``x``. ``$ne x``: not ``$eq x``.
* ``$gt x`` / ``$gte x`` / ``$lt x`` / ``$lte x``: ``v > x`` / ``>=`` / ``<`` / ``<=``.
* ``$in [x, ...]``: ``v`` equals some ``x`` (an empty list matches nothing);
  ``$nin [...]``: not ``$in [...]``. The operand's items must be scalars.
* ``$exists true|false``: the field is present / missing (whatever its value).

List-valued metadata (for example ``{"tags": ["a", "b"]}``) is matched element-wise: ``$eq x``
holds if some element equals ``x``, or if ``x`` is itself a list equal to the whole value
(same length, items equal in order); ``$in`` holds if some element is in the operand; a
comparison holds if some element satisfies it. ``$ne`` and ``$nin`` are exactly the negations
of ``$eq`` and ``$in``, so ``{"tags": {"$ne": "a"}}`` means "no element is ``a``". Several
operators on one field are checked independently, so ``{"$gt": 1, "$lt": 3}`` on a list may
be satisfied by two different elements.

A missing field fails ``$eq``, ``$gt``, ``$gte``, ``$lt``, ``$lte`` and ``$in`` (also
``{"$eq": None}``) and therefore passes ``$ne`` and ``$nin``.

Errors. :class:`~arrwdb.domain.errors.InvalidFilterError` is raised at compile time, never
during evaluation, for: a filter or ``$not`` operand that is not an object; a top-level key
starting with ``$`` that is not a combinator, or an unknown field operator (the message names
it: ``unknown filter operator '$regex'``); ``$and``/``$or`` without a non-empty list of
objects; an empty operator object; an object used as an equality value; a value of an
unsupported type, or a list holding a non-scalar; ``$in``/``$nin`` without a list of scalars;
``$exists`` without a bool; a comparison operand that is not a number or a string.

Evaluation is cheap: an empty filter compiles to :data:`MATCH_ALL` (compare with ``is`` to
skip evaluation altogether), and each field is looked up once per field clause.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

from arrwdb.domain.errors import InvalidFilterError

Predicate = Callable[[Mapping[str, Any]], bool]
"""A compiled filter: metadata in, "does it match" out."""

_Test = Callable[[Any], bool]  # a test of one (raw) metadata value, possibly _MISSING


def _match_all(metadata: Mapping[str, Any]) -> bool:
    return True


def _match_none(metadata: Mapping[str, Any]) -> bool:
    return False


MATCH_ALL: Final[Predicate] = _match_all
"""The predicate of an empty filter. ``compile_filter(...) is MATCH_ALL`` means "no filter"."""

COMBINATORS: Final = frozenset({"$and", "$or", "$not"})
OPERATORS: Final = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"})

_MISSING: Final = object()
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def compile_filter(spec: Mapping[str, Any] | None) -> Predicate:
    """Check ``spec`` and compile it into a predicate over a chunk's metadata.

    ``None`` or an empty mapping gives :data:`MATCH_ALL`. Raises ``InvalidFilterError``
    (naming the operator or field at fault) if ``spec`` breaks the grammar above.
    """
    if spec is None:
        return MATCH_ALL
    return _compile(spec, set())


def filter_fields(spec: Mapping[str, Any] | None) -> frozenset[str]:
    """The metadata fields ``spec`` reads. Validates like :func:`compile_filter`."""
    fields: set[str] = set()
    if spec is not None:
        _compile(spec, fields)
    return frozenset(fields)


# --- compiling filters and combinators -------------------------------------------------------


def _compile(spec: object, fields: set[str]) -> Predicate:
    if not isinstance(spec, Mapping):
        raise InvalidFilterError(f"a filter must be an object, got {_type_name(spec)}")
    parts: list[Predicate] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise InvalidFilterError(f"filter keys must be strings, got {_type_name(key)}")
        if key.startswith("$"):
            parts.append(_compile_combinator(key, value, fields))
        else:
            fields.add(key)
            parts.append(_compile_field(key, value))
    return _all_of(parts)


def _compile_combinator(op: str, operand: object, fields: set[str]) -> Predicate:
    if op == "$not":
        if not isinstance(operand, Mapping):
            raise InvalidFilterError(
                f"'$not' needs a filter object, got {_type_name(operand)}", operator=op
            )
        inner = _compile(operand, fields)
        if inner is MATCH_ALL:
            return _match_none
        return lambda metadata: not inner(metadata)
    if op not in COMBINATORS:
        raise InvalidFilterError(f"unknown filter operator {op!r}", operator=op)
    if not isinstance(operand, list | tuple) or not operand:
        raise InvalidFilterError(
            f"{op!r} needs a non-empty list of filter objects, got {_describe(operand)}",
            operator=op,
        )
    for item in operand:
        if not isinstance(item, Mapping):
            raise InvalidFilterError(
                f"{op!r} items must be filter objects, got {_type_name(item)}", operator=op
            )
    parts = [_compile(item, fields) for item in operand]
    return _all_of(parts) if op == "$and" else _any_of(parts)


def _all_of(parts: list[Predicate]) -> Predicate:
    parts = [p for p in parts if p is not MATCH_ALL]
    if not parts:
        return MATCH_ALL
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda metadata: first(metadata) and second(metadata)
    frozen = tuple(parts)
    return lambda metadata: all(p(metadata) for p in frozen)


def _any_of(parts: list[Predicate]) -> Predicate:
    if any(p is MATCH_ALL for p in parts):
        return MATCH_ALL
    if len(parts) == 1:
        return parts[0]
    frozen = tuple(parts)
    return lambda metadata: any(p(metadata) for p in frozen)


# --- compiling field clauses -----------------------------------------------------------------


def _compile_field(field: str, clause: object) -> Predicate:
    if isinstance(clause, Mapping):
        if not clause:
            raise InvalidFilterError(f"field {field!r} has an empty operator object", field=field)
        if not all(isinstance(k, str) and k.startswith("$") for k in clause):
            raise InvalidFilterError(
                f"field {field!r} is compared with an object; values must be scalars or "
                "lists, and operator names start with '$'",
                field=field,
            )
        tests = [_compile_operator(field, op, operand) for op, operand in clause.items()]
    else:
        tests = [_eq_test(field, "$eq", clause)]
    if len(tests) == 1:
        test = tests[0]
        return lambda metadata: test(metadata.get(field, _MISSING))
    frozen = tuple(tests)

    def check_all(metadata: Mapping[str, Any]) -> bool:
        value = metadata.get(field, _MISSING)
        return all(t(value) for t in frozen)

    return check_all


def _compile_operator(field: str, op: str, operand: object) -> _Test:
    if op == "$eq":
        return _eq_test(field, op, operand)
    if op == "$ne":
        eq = _eq_test(field, op, operand)
        return lambda value: not eq(value)
    if op in _COMPARISONS:
        return _comparison_test(field, op, operand)
    if op == "$in":
        return _in_test(field, op, operand)
    if op == "$nin":
        is_in = _in_test(field, op, operand)
        return lambda value: not is_in(value)
    if op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidFilterError(
                f"operator '$exists' on field {field!r} needs true or false, "
                f"got {_type_name(operand)}",
                field=field,
                operator=op,
            )
        if operand:
            return lambda value: value is not _MISSING
        return lambda value: value is _MISSING
    raise InvalidFilterError(
        f"unknown filter operator {op!r} (on field {field!r})", field=field, operator=op
    )


def _eq_test(field: str, op: str, operand: object) -> _Test:
    if isinstance(operand, list | tuple):
        item_tests = tuple(_scalar_equals(field, op, item, in_list=True) for item in operand)
        size = len(item_tests)

        def whole_equals(value: Any) -> bool:
            return (
                isinstance(value, list | tuple)
                and len(value) == size
                and all(t(v) for t, v in zip(item_tests, value, strict=True))
            )

        def list_equals(value: Any) -> bool:
            if whole_equals(value):
                return True
            return isinstance(value, list | tuple) and any(whole_equals(v) for v in value)

        return list_equals
    return _elementwise(_scalar_equals(field, op, operand, in_list=False))


def _scalar_equals(field: str, op: str, operand: object, *, in_list: bool) -> _Test:
    """A test of one scalar metadata value (not a list) for typed equality with ``operand``."""
    if isinstance(operand, str):
        return lambda v: isinstance(v, str) and v == operand
    if operand is None:
        return lambda v: v is None
    if isinstance(operand, bool):
        return lambda v: v is operand
    if _is_number(operand):
        return lambda v: _is_number(v) and v == operand
    if isinstance(operand, Mapping):
        raise InvalidFilterError(
            f"field {field!r} is compared with an object; values must be scalars or lists, "
            "and operator names start with '$'",
            field=field,
            operator=op,
        )
    what = "list items on" if in_list else "values on"
    raise InvalidFilterError(
        f"{op!r} {what} field {field!r} must be strings, numbers, booleans or null, "
        f"got {_type_name(operand)}",
        field=field,
        operator=op,
    )


def _comparison_test(field: str, op: str, operand: object) -> _Test:
    compare = _COMPARISONS[op]
    if isinstance(operand, str):
        return _elementwise(lambda v: isinstance(v, str) and compare(v, operand))
    if _is_number(operand):
        return _elementwise(lambda v: _is_number(v) and compare(v, operand))
    raise InvalidFilterError(
        f"operator {op!r} on field {field!r} needs a number or a string, got {_type_name(operand)}",
        field=field,
        operator=op,
    )


def _in_test(field: str, op: str, operand: object) -> _Test:
    if not isinstance(operand, list | tuple):
        raise InvalidFilterError(
            f"operator {op!r} on field {field!r} needs a list, got {_type_name(operand)}",
            field=field,
            operator=op,
        )
    # Bucket the operand by type so that membership is a set lookup that never mixes types
    # (in a plain set, True == 1 and hash(True) == hash(1)).
    strings: set[str] = set()
    numbers_: set[Any] = set()
    bools: set[bool] = set()
    has_none = False
    for item in operand:
        if isinstance(item, str):
            strings.add(item)
        elif item is None:
            has_none = True
        elif isinstance(item, bool):
            bools.add(item)
        elif _is_number(item):
            if item == item:  # NaN equals nothing, and a set would match it by identity
                numbers_.add(item)
        else:
            raise InvalidFilterError(
                f"operator {op!r} on field {field!r} needs a list of strings, numbers, "
                f"booleans or null, got an item of type {_type_name(item)}",
                field=field,
                operator=op,
            )

    def member(v: Any) -> bool:
        if isinstance(v, str):
            return v in strings
        if v is None:
            return has_none
        if isinstance(v, bool):
            return v in bools
        if _is_number(v):
            return v == v and v in numbers_
        return False

    return _elementwise(member)


def _elementwise(test: _Test) -> _Test:
    """Lift a scalar test to a metadata value: a list matches if any element does."""

    def check(value: Any) -> bool:
        if isinstance(value, list | tuple):
            return any(map(test, value))
        return test(value)

    return check


def _is_number(value: object) -> bool:
    kind = type(value)
    if kind is int or kind is float:
        return True
    return kind is not bool and isinstance(value, numbers.Real)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _describe(value: object) -> str:
    return "an empty list" if isinstance(value, list | tuple) else _type_name(value)
