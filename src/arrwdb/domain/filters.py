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
skip evaluation altogether), and an operator on a plain ``str``/``int``/``float``/``bool``/
``None`` value costs one dictionary lookup and one C-level comparison or set lookup.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Final

from arrwdb.domain._filter_plan import Plan, plan_filter
from arrwdb.domain._filter_plan import is_number as _is_number
from arrwdb.domain._newest import Newest
from arrwdb.domain.errors import InvalidFilterError, LimitExceededError
from arrwdb.domain.limits import FILTER_DEPTH

Predicate = Callable[[Mapping[str, Any]], bool]
"""A compiled filter: metadata in, "does it match" out."""

_Test = Callable[[Any], bool]  # a test of one scalar value (not a list), possibly _MISSING


def _match_all(metadata: Mapping[str, Any]) -> bool:
    return True


def _match_none(metadata: Mapping[str, Any]) -> bool:
    return False


MATCH_ALL: Final[Predicate] = _match_all
"""The predicate of an empty filter. ``compile_filter(...) is MATCH_ALL`` means "no filter"."""

COMBINATORS: Final = frozenset({"$and", "$or", "$not"})
OPERATORS: Final = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"})

_MISSING: Final = object()
_PLAN: Final = "_arrwdb_plan"  # where a compiled predicate keeps its plan
_COMPARISONS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
_MIRRORED: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "$gt": operator.lt,
    "$gte": operator.le,
    "$lt": operator.gt,
    "$lte": operator.ge,
}
_SEQUENCES: Final = (list, tuple)
_SCALAR_TYPES: Final = (str, int, float, bool, type(None))


def compile_filter(spec: Mapping[str, Any] | None) -> Predicate:
    """Check ``spec`` and compile it into a predicate over a chunk's metadata.

    ``None`` or an empty mapping gives :data:`MATCH_ALL`. Raises ``InvalidFilterError``
    (naming the operator or field at fault) if ``spec`` breaks the grammar above.
    """
    if spec is None:
        return MATCH_ALL
    # A plain dict's repr names every key, operator and operand with its type (1, 1.0, True
    # and "1" differ), so equal reprs are the same filter: the predicate is kept for it.
    key = repr(spec) if type(spec) is dict else None
    if key is not None:
        kept = _COMPILED.get(key)
        if kept is not None:
            return kept
    predicate = _compile(spec, set(), 0)
    if predicate is not MATCH_ALL and predicate is not _match_none:
        # the same filter as a vectorised plan, for evaluating it over a whole library
        setattr(predicate, _PLAN, plan_filter(spec))
    if key is not None and len(key) <= _COMPILED_KEY_MAX:
        _COMPILED.put(key, predicate)
    return predicate


#: The predicates of the last filters compiled (predicates are pure functions, so one serves
#: every search given an equal filter), by the filter's repr; longer filters are not kept.
_COMPILED: Final[Newest[str, Predicate]] = Newest(256)
_COMPILED_KEY_MAX: Final = 4096


def plan_of(predicate: Predicate) -> Plan | None:
    """The vectorised plan of a predicate ``compile_filter`` made (``_filter_plan``), or
    ``None``: evaluate it per chunk."""
    if predicate is MATCH_ALL:
        return ("all",)
    if predicate is _match_none:
        return ("none",)
    plan: Plan | None = getattr(predicate, _PLAN, None)
    return plan


def filter_fields(spec: Mapping[str, Any] | None) -> frozenset[str]:
    """The metadata fields ``spec`` reads. Validates like :func:`compile_filter`."""
    fields: set[str] = set()
    if spec is not None:
        _compile(spec, fields, 0)
    return frozenset(fields)


# --- compiling filters and combinators -------------------------------------------------------


def _compile(spec: object, fields: set[str], depth: int) -> Predicate:
    if depth > FILTER_DEPTH:
        raise LimitExceededError(
            f"filter combinators nest deeper than {FILTER_DEPTH} levels",
            limit="filter depth",
            field="filter",
        )
    if not isinstance(spec, Mapping):
        raise InvalidFilterError(f"a filter must be an object, got {_type_name(spec)}")
    parts: list[Predicate] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise InvalidFilterError(f"filter keys must be strings, got {_type_name(key)}")
        if key.startswith("$"):
            parts.append(_compile_combinator(key, value, fields, depth + 1))
        else:
            fields.add(key)
            parts.append(_compile_field(key, value))
    return _all_of(parts)


def _compile_combinator(op: str, operand: object, fields: set[str], depth: int) -> Predicate:
    if op == "$not":
        if not isinstance(operand, Mapping):
            raise InvalidFilterError(
                f"'$not' needs a filter object, got {_type_name(operand)}", operator=op
            )
        inner = _compile(operand, fields, depth)
        return _match_none if inner is MATCH_ALL else _negation(inner)
    if op not in COMBINATORS:
        raise InvalidFilterError(f"unknown filter operator {op!r}", operator=op)
    if not isinstance(operand, _SEQUENCES) or not operand:
        raise InvalidFilterError(
            f"{op!r} needs a non-empty list of filter objects, got "
            f"{'an empty list' if isinstance(operand, _SEQUENCES) else _type_name(operand)}",
            operator=op,
        )
    for item in operand:
        if not isinstance(item, Mapping):
            raise InvalidFilterError(
                f"{op!r} items must be filter objects, got {_type_name(item)}", operator=op
            )
    parts = [_compile(item, fields, depth) for item in operand]
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
    if not isinstance(clause, Mapping):
        return _equals(field, "$eq", clause)
    if not clause:
        raise InvalidFilterError(f"field {field!r} has an empty operator object", field=field)
    if not all(isinstance(k, str) and k.startswith("$") for k in clause):
        raise InvalidFilterError(
            f"field {field!r} is compared with an object; values must be scalars or "
            "lists, and operator names start with '$'",
            field=field,
        )
    return _all_of([_compile_operator(field, op, operand) for op, operand in clause.items()])


def _compile_operator(field: str, op: str, operand: object) -> Predicate:
    if op == "$eq":
        return _equals(field, op, operand)
    if op == "$ne":
        return _negation(_equals(field, op, operand))
    if op in _COMPARISONS:
        return _compares(field, op, operand)
    if op == "$in":
        return _is_in(field, op, operand)
    if op == "$nin":
        return _negation(_is_in(field, op, operand))
    if op == "$exists":
        if not isinstance(operand, bool):
            raise InvalidFilterError(
                f"operator '$exists' on field {field!r} needs true or false, "
                f"got {_type_name(operand)}",
                field=field,
                operator=op,
            )
        if operand:
            return lambda metadata: field in metadata
        return lambda metadata: field not in metadata
    raise InvalidFilterError(
        f"unknown filter operator {op!r} (on field {field!r})", field=field, operator=op
    )


def _negation(predicate: Predicate) -> Predicate:
    return lambda metadata: not predicate(metadata)


def _equals(field: str, op: str, operand: object) -> Predicate:
    if not isinstance(operand, _SEQUENCES):
        return _lift(field, *_scalar_equals(field, op, operand, in_list=False))
    item_tests = tuple(_scalar_equals(field, op, item, in_list=True)[0] for item in operand)
    size = len(item_tests)

    def equals_whole(value: Any) -> bool:
        return (
            isinstance(value, _SEQUENCES)
            and len(value) == size
            and all(t(v) for t, v in zip(item_tests, value, strict=True))
        )

    def predicate(metadata: Mapping[str, Any]) -> bool:
        value = metadata.get(field, _MISSING)
        if not isinstance(value, _SEQUENCES):
            return False
        return equals_whole(value) or any(map(equals_whole, value))

    return predicate


def _scalar_equals(
    field: str, op: str, operand: object, *, in_list: bool
) -> tuple[_Test, dict[type, _Test]]:
    """Typed equality with ``operand``: a test of any scalar, and fast tests by exact type."""
    if isinstance(operand, str):
        return (lambda v: isinstance(v, str) and v == operand), {str: operand.__eq__}
    if operand is None:
        return (lambda v: v is None), {type(None): _always}
    if isinstance(operand, bool):
        return (lambda v: v is operand), {bool: partial(operator.is_, operand)}
    if _is_number(operand):
        fast = partial(operator.eq, operand)
        return (lambda v: _is_number(v) and v == operand), {int: fast, float: fast}
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


def _compares(field: str, op: str, operand: object) -> Predicate:
    compare = _COMPARISONS[op]
    # fast(v) is compare(v, operand), written as the mirrored comparison operand <op'> v.
    fast = partial(_MIRRORED[op], operand)
    if isinstance(operand, str):
        return _lift(field, lambda v: isinstance(v, str) and compare(v, operand), {str: fast})
    if _is_number(operand):
        return _lift(
            field, lambda v: _is_number(v) and compare(v, operand), {int: fast, float: fast}
        )
    raise InvalidFilterError(
        f"operator {op!r} on field {field!r} needs a number or a string, got {_type_name(operand)}",
        field=field,
        operator=op,
    )


def _is_in(field: str, op: str, operand: object) -> Predicate:
    if not isinstance(operand, _SEQUENCES):
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
    in_strings = frozenset(strings).__contains__
    in_numbers = frozenset(numbers_).__contains__
    in_bools = frozenset(bools).__contains__
    none_test = _always if has_none else _never

    def member(v: Any) -> bool:
        if isinstance(v, str):
            return in_strings(v)
        if v is None:
            return has_none
        if isinstance(v, bool):
            return in_bools(v)
        if _is_number(v):
            return v == v and in_numbers(v)
        return False

    fast: dict[type, _Test] = {
        str: in_strings,
        int: in_numbers,
        float: in_numbers,  # NaN is not in the set and, by identity, matches nothing there
        bool: in_bools,
        type(None): none_test,
    }
    return _lift(field, member, fast)


def _lift(field: str, test: _Test, fast: dict[type, _Test]) -> Predicate:
    """The predicate "the field's value passes ``test``": a list or tuple passes if any of its
    elements does, a missing field never. ``fast`` gives, by exact class, tests equivalent to
    ``test`` that skip its type checks; other plain scalars fail without calling ``test``."""
    table: dict[type, _Test] = dict.fromkeys(_SCALAR_TYPES, _never)
    table.update(fast)
    quick_test = table.get

    def predicate(metadata: Mapping[str, Any]) -> bool:
        value = metadata.get(field, _MISSING)
        quick = quick_test(value.__class__)
        if quick is not None:
            return quick(value)
        if isinstance(value, _SEQUENCES):
            return any(map(test, value))
        return test(value)

    return predicate


def _always(value: Any) -> bool:
    return True


def _never(value: Any) -> bool:
    return False


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, _SEQUENCES):
        return "list"
    return type(value).__name__
