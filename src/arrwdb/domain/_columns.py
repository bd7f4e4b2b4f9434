"""A library's chunk metadata in columns, so that a filter is evaluated over every chunk at once.

``MetadataColumns`` keeps, for each metadata field a filter has read, one row per label: the
value's kind (missing, null, bool, number, string, other), its number (numbers and bools, as a
float64), and its string's code in the field's dictionary of strings. A plan
(``_filter_plan``) evaluates to a boolean mask over the labels in a few numpy operations per
clause, instead of one Python call per chunk.

Columns are made the first time a filter reads their field (one pass over the chunks) and kept
current from then on by the library's state, which tells them of every chunk added, refreshed
or removed (under its write lock). A library never filtered pays nothing.

Exactness: a value a column cannot hold exactly (a list, an integer beyond 2**53, another type)
is of kind *other*; the chunks with such a value in a field the filter reads are checked with
the predicate itself, so the mask is always what the predicate says, chunk by chunk.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from arrwdb.domain._filter_plan import EXACT_INT, Plan, plan_fields
from arrwdb.domain.filters import Predicate

MISSING: Final = 0
NULL: Final = 1
BOOL: Final = 2
NUMBER: Final = 3
STRING: Final = 4
OTHER: Final = 5

Mask = npt.NDArray[np.bool_]
#: A label's chunk metadata (``None``: the label is not live).
MetadataOf = Callable[[int], Mapping[str, Any] | None]

_ABSENT: Final = object()


class _Column:
    """One field's values, one row per label."""

    __slots__ = (
        "_by_code",
        "_ordered",
        "_ranks",
        "codes",
        "field",
        "kinds",
        "numbers",
        "others",
        "strings",
    )

    def __init__(self, field: str, capacity: int) -> None:
        self.field = field
        self.kinds = np.zeros(capacity, dtype=np.int8)  # MISSING
        self.numbers = np.zeros(capacity, dtype=np.float64)
        self.codes = np.full(capacity, -1, dtype=np.int32)
        self.strings: dict[str, int] = {}
        self._by_code: list[str] = []
        self._ranks: npt.NDArray[np.int64] | None = None  # the codes' places in sorted order
        self._ordered: list[str] = []
        self.others = 0  # rows of kind OTHER (ever set: a count of where to look, not exact)

    def grow(self, capacity: int) -> None:
        old = len(self.kinds)
        if capacity <= old:
            return
        size = max(capacity, 2 * old)
        self.kinds = np.concatenate([self.kinds, np.zeros(size - old, dtype=np.int8)])
        self.numbers = np.concatenate([self.numbers, np.zeros(size - old, dtype=np.float64)])
        self.codes = np.concatenate([self.codes, np.full(size - old, -1, dtype=np.int32)])

    def put(self, row: int, value: Any) -> None:
        kind = type(value)
        if kind is str:
            code = self.strings.get(value)
            if code is None:
                code = self.strings[value] = len(self._by_code)
                self._by_code.append(value)
                self._ranks = None
            self.kinds[row] = STRING
            self.codes[row] = code
            return
        self.codes[row] = -1
        if kind is float or (kind is int and -EXACT_INT <= value <= EXACT_INT):
            self.kinds[row] = NUMBER
            self.numbers[row] = value
        elif kind is bool:
            self.kinds[row] = BOOL
            self.numbers[row] = 1.0 if value else 0.0
        elif value is None:
            self.kinds[row] = NULL
        elif value is _ABSENT:
            self.kinds[row] = MISSING
        else:  # a list, a big integer, another type: the predicate decides
            self.kinds[row] = OTHER
            self.others += 1

    def ranks(self) -> tuple[list[str], npt.NDArray[np.int64]]:
        """The field's strings in code-point order, and each code's place in it."""
        ranks = self._ranks
        if ranks is None:  # (a new string came since: made again)
            self._ordered = ordered = sorted(self._by_code)
            place = {s: i for i, s in enumerate(ordered)}
            ranks = np.fromiter((place[s] for s in self._by_code), np.int64, len(self._by_code))
            self._ranks = ranks
        return self._ordered, ranks


class MetadataColumns:
    """The metadata columns of one library's labels (see the module's docstring)."""

    def __init__(self) -> None:
        self._columns: dict[str, _Column] = {}
        self._alive = np.zeros(0, dtype=np.bool_)
        self._rows = 0  # labels the columns cover
        self._made = False  # the live labels are followed (from the first mask on)
        # readers (searches, under the library's read lock) may make a column at the same
        # time: one at a time
        self._lock = threading.Lock()

    # -- kept current by the library's state (under its write lock) ---------------------------

    def extend(self, start: int, rows: Iterable[Mapping[str, Any]]) -> None:
        """Live labels ``start, start + 1, ...`` with these metadata (they follow the last)."""
        if not self._made:
            return
        items = list(rows)
        end = start + len(items)
        assert start == self._rows, "labels are handed out in order"
        self._grow(end)
        self._alive[start:end] = True
        for column in self._columns.values():
            put, field = column.put, column.field
            for row, metadata in enumerate(items, start):
                value = metadata.get(field, _ABSENT)
                if value is not _ABSENT:
                    put(row, value)
        self._rows = end

    def refresh(self, labels: Iterable[int], rows: Iterable[Mapping[str, Any]]) -> None:
        """New metadata for live labels."""
        if not self._made:
            return
        pairs = list(zip(labels, rows, strict=True))
        for column in self._columns.values():
            put, field = column.put, column.field
            for row, metadata in pairs:
                put(row, metadata.get(field, _ABSENT))

    def remove(self, labels: npt.NDArray[np.int64]) -> None:
        if self._made and len(labels):
            self._alive[labels] = False

    def reset(self) -> None:
        """Forget every column (the labels were handed out anew)."""
        self._columns = {}
        self._alive = np.zeros(0, dtype=np.bool_)
        self._rows = 0
        self._made = False

    # -- reads --------------------------------------------------------------------------------

    def mask(self, plan: Plan, predicate: Predicate, n: int, metadata_of: MetadataOf) -> Mask:
        """Which of the labels ``0 ... n - 1`` pass the filter whose plan and predicate these
        are."""
        fields = plan_fields(plan)
        with self._lock:
            self._make(fields, n, metadata_of)
        assert n == self._rows, "the columns follow every label"
        mask = _evaluate(plan, self._columns, n) & self._alive[:n]
        # the rows whose value in a field read is of kind OTHER: the predicate decides
        odd: Mask | None = None
        for field in fields:
            column = self._columns[field]
            if column.others:
                here = column.kinds[:n] == OTHER
                odd = here if odd is None else odd | here
        if odd is not None:
            for row in np.flatnonzero(odd & self._alive[:n]).tolist():
                metadata = metadata_of(row)
                mask[row] = metadata is not None and predicate(metadata)
        return mask

    def _make(self, fields: Iterable[str], n: int, metadata_of: MetadataOf) -> None:
        """Columns for ``fields`` that are not there yet, from every label's metadata."""
        missing = [f for f in fields if f not in self._columns]
        if self._made and not missing:
            return
        rows = [metadata_of(row) for row in range(n)]
        if not self._made:  # the first: the live labels too
            alive = np.zeros(max(n, 16), dtype=np.bool_)
            alive[:n] = [metadata is not None for metadata in rows]
            self._alive, self._rows, self._made = alive, n, True
        for field in missing:
            column = _Column(field, len(self._alive))
            put = column.put
            for row, metadata in enumerate(rows):
                if metadata is not None:
                    value = metadata.get(field, _ABSENT)
                    if value is not _ABSENT:
                        put(row, value)
            self._columns[field] = column

    def _grow(self, rows: int) -> None:
        if rows > len(self._alive):
            size = max(rows, 2 * len(self._alive))
            alive = np.zeros(size, dtype=np.bool_)
            alive[: len(self._alive)] = self._alive
            self._alive = alive
            for column in self._columns.values():
                column.grow(size)


# -- evaluating a plan ------------------------------------------------------------------------


def _evaluate(plan: Plan, columns: Mapping[str, _Column], n: int) -> Mask:
    kind = plan[0]
    if kind == "and":
        out = _evaluate(plan[1][0], columns, n)
        for part in plan[1][1:]:
            out &= _evaluate(part, columns, n)
        return out
    if kind == "or":
        out = _evaluate(plan[1][0], columns, n)
        for part in plan[1][1:]:
            out |= _evaluate(part, columns, n)
        return out
    if kind == "not":
        return ~_evaluate(plan[1], columns, n)
    if kind == "all":
        return np.ones(n, dtype=np.bool_)
    if kind == "none":
        return np.zeros(n, dtype=np.bool_)
    column = columns[plan[1]]
    kinds = column.kinds[:n]
    if kind == "exists":
        present: Mask = kinds != MISSING if plan[2] else kinds == MISSING
        return present
    if kind == "eq":
        return _equals(column, plan[2], n)
    if kind == "in":
        out = np.zeros(n, dtype=np.bool_)
        for value in plan[2]:
            out |= _equals(column, value, n)
        return out
    assert kind == "cmp"
    return _compares(column, plan[2], plan[3], n)


def _equals(column: _Column, value: Any, n: int) -> Mask:
    kinds = column.kinds[:n]
    if isinstance(value, str):
        code = column.strings.get(value)
        if code is None:
            return np.zeros(n, dtype=np.bool_)
        eq: Mask = column.codes[:n] == code
        return eq
    if value is None:
        null: Mask = kinds == NULL
        return null
    if isinstance(value, bool):
        flag: Mask = (kinds == BOOL) & (column.numbers[:n] == (1.0 if value else 0.0))
        return flag
    number: Mask = (kinds == NUMBER) & (column.numbers[:n] == value)
    return number


def _compares(column: _Column, op: str, value: Any, n: int) -> Mask:
    if isinstance(value, str):
        ordered, ranks = column.ranks()
        codes = column.codes[:n]
        # every string's place in code-point order (a row without a string: -1, never asked)
        places = np.where(codes >= 0, ranks[np.maximum(codes, 0)] if len(ranks) else -1, -1)
        if op == "$gt":
            found: Mask = places >= bisect.bisect_right(ordered, value)
        elif op == "$gte":
            found = places >= bisect.bisect_left(ordered, value)
        elif op == "$lt":
            found = places < bisect.bisect_left(ordered, value)
        else:
            found = places < bisect.bisect_right(ordered, value)
        return found & (codes >= 0)
    numbers = column.numbers[:n]
    if op == "$gt":
        test = numbers > value
    elif op == "$gte":
        test = numbers >= value
    elif op == "$lt":
        test = numbers < value
    else:
        test = numbers <= value
    compared: Mask = (column.kinds[:n] == NUMBER) & test
    return compared
