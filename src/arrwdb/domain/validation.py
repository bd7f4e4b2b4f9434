"""Input rules of the domain, checked once at the service boundary.

Every function raises a ``ValidationError`` subclass naming the offending field, so that all
transports report the same message and code. The bounds are those of ``arrwdb.domain.limits``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np

from arrwdb.domain.errors import (
    DimensionMismatchError,
    InvalidArgumentError,
    InvalidVectorError,
    PayloadTooLargeError,
)
from arrwdb.domain.limits import (
    DIMENSION,
    EF,
    EF_CONSTRUCTION,
    EF_SEARCH,
    HNSW_M,
    METADATA_INT,
    NAME_LENGTH,
    PAGE_LIMIT,
    Bound,
    K,
)
from arrwdb.domain.models import (
    GROUP_BY,
    INCLUDABLE,
    INDEX_KINDS,
    METRICS,
    IndexParams,
    Matrix,
    Metric,
    Vector,
)

_INDEX_PARAMS: Final = {"m": HNSW_M, "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH}
_SCALARS = (str, int, float, bool, type(None))
_PLAIN_NUMBERS: Final = frozenset({float, int})


def _bounded(value: object, bound: Bound) -> int:
    """``value`` if it is an integer in ``bound``; else an error naming ``bound.name``."""
    if not isinstance(value, int) or value not in bound:  # (bound rejects a bool)
        raise InvalidArgumentError(
            f"{bound.name} must be an integer from {bound.low} to {bound.high}, not {value!r}",
            field=bound.name,
        )
    return value


def check_k(k: object) -> int:
    return _bounded(k, K)


def check_ef(ef: object) -> int | None:
    return None if ef is None else _bounded(ef, EF)


def check_page_limit(limit: object) -> int:
    """A page size (``list_documents``)."""
    return _bounded(limit, PAGE_LIMIT)


def check_include(include: object) -> tuple[str, ...] | None:
    """What search hits carry (``None``: the default, text and metadata)."""
    if include is None:
        return None
    if isinstance(include, str) or not isinstance(include, Sequence):
        raise InvalidArgumentError(
            f"include must be a list of {', '.join(INCLUDABLE)}", field="include"
        )
    for item in include:
        if item not in INCLUDABLE:
            raise InvalidArgumentError(
                f"include may name {', '.join(INCLUDABLE)}, not {item!r}", field="include"
            )
    return tuple(include)


def check_group_by(group_by: object) -> str | None:
    if group_by is not None and group_by not in GROUP_BY:
        raise InvalidArgumentError(
            f"group_by must be one of {', '.join(GROUP_BY)} (or left out), not {group_by!r}",
            field="group_by",
        )
    return group_by


def check_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError(f"{field} must be a non-empty string", field=field)
    if len(name) not in NAME_LENGTH:
        raise InvalidArgumentError(
            f"{field} must be at most {NAME_LENGTH.high} characters", field=field
        )
    return name


#: The path segments after ``/documents/`` that name routes of their own (``.../documents/
#: query``): a document of one of these ids could not be read or written at its URL.
RESERVED_DOCUMENT_IDS: Final = frozenset({"query", "count", "delete", "stream"})


def check_document_id(document_id: object, field: str = "id") -> str:
    """A client-chosen document id: a name that a URL path can carry as one segment (no
    ``/``, no control characters, not one of ``RESERVED_DOCUMENT_IDS``)."""
    checked = check_name(document_id, field)
    if "/" in checked or not checked.isprintable():
        raise InvalidArgumentError(
            f"{field} must not contain '/' or control characters (it is a URL path segment)",
            field=field,
        )
    if checked in RESERVED_DOCUMENT_IDS:
        raise InvalidArgumentError(
            f"{field} {checked!r} is reserved: .../documents/{checked} is a route of its own "
            f"(reserved: {', '.join(sorted(RESERVED_DOCUMENT_IDS))})",
            field=field,
        )
    return checked


def check_text(text: object, field: str) -> str:
    if not isinstance(text, str):
        raise InvalidArgumentError(f"{field} must be a string", field=field)
    return text


def check_metadata(
    metadata: object, field: str = "metadata", max_bytes: int | None = None
) -> dict[str, Any]:
    """An object whose values are scalars or lists of scalars (copied, so callers can't mutate
    what was stored), of at most ``max_bytes`` (keys and values as UTF-8, 8 per number):
    ``PayloadTooLargeError`` beyond it."""
    if metadata is None:
        return {}
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        raise InvalidArgumentError(f"{field} must be an object", field=field)
    if not metadata:
        return {}
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise InvalidArgumentError(f"{field} keys must be strings", field=field)
        if isinstance(value, list | tuple):
            if not all(isinstance(v, _SCALARS) for v in value):
                raise InvalidArgumentError(
                    f"{field}.{key}: lists may hold only strings, numbers, booleans and null",
                    field=f"{field}.{key}",
                )
            for item in value:
                _check_number(item, f"{field}.{key}")
            value = [_plain(v) for v in value]
        elif not isinstance(value, _SCALARS):
            raise InvalidArgumentError(
                f"{field}.{key} must be a string, number, boolean, null or a list of those",
                field=f"{field}.{key}",
            )
        _check_number(value, f"{field}.{key}")
        out[key] = _plain(value)
    if max_bytes is not None:
        check_metadata_size(out, max_bytes, field)
    return out


def check_metadata_size(
    metadata: Mapping[str, Any], max_bytes: int, field: str = "metadata"
) -> None:
    """``PayloadTooLargeError`` when ``metadata`` (checked) takes more than ``max_bytes``."""
    size = metadata_bytes(metadata)
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{field} takes {size} bytes, more than the limit of {max_bytes} (max_metadata_bytes)",
            limit="max_metadata_bytes",
            field=field,
        )


def metadata_bytes(metadata: Mapping[str, Any]) -> int:
    """About what ``metadata`` (checked) takes: keys and strings as UTF-8, 8 per other value."""
    size = 0
    for key, value in metadata.items():
        size += utf8_length(key)
        if isinstance(value, list):
            size += sum(utf8_length(x) if isinstance(x, str) else 8 for x in value)
        else:
            size += utf8_length(value) if isinstance(value, str) else 8
    return size


def utf8_length(text: str) -> int:
    """How many bytes ``text`` takes as UTF-8 (without encoding an ASCII text)."""
    return len(text) if text.isascii() else len(text.encode())


def check_text_size(size: int, max_bytes: int, field: str) -> None:
    """``PayloadTooLargeError`` for a document's text of ``size`` bytes beyond ``max_bytes``."""
    if size > max_bytes:
        raise PayloadTooLargeError(
            f"{field} takes {size} bytes, more than the limit of {max_bytes} (max_text_bytes)",
            limit="max_text_bytes",
            field=field,
        )


def _check_number(value: object, field: str) -> None:
    """A metadata number every store keeps as it is: finite, an integer within 64 bits."""
    if isinstance(value, float) and not np.isfinite(value):
        raise InvalidArgumentError(f"{field} must be finite", field=field)
    if isinstance(value, int) and not isinstance(value, bool) and value not in METADATA_INT:
        raise InvalidArgumentError(
            f"{field}: integers must be from -2**63 to 2**64 - 1 (use a string for others)",
            field=field,
        )


def _plain(value: Any) -> Any:
    """Subclasses of the JSON scalars (``numpy.float64``, str enums) as the plain type, so
    every store can encode them."""
    kind = type(value)
    if kind in _SCALARS or isinstance(value, list):
        return value
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    return value


def check_metric(metric: object) -> Metric:
    if metric not in METRICS:
        raise InvalidArgumentError(
            f"metric must be one of {', '.join(METRICS)}, not {metric!r}", field="metric"
        )
    return metric


def check_index_kind(kind: object) -> str:
    if kind not in INDEX_KINDS:
        raise InvalidArgumentError(
            f"index must be one of {', '.join(INDEX_KINDS)}, not {kind!r}", field="index"
        )
    return str(kind)


def check_dimension(dimension: object) -> int | None:
    return None if dimension is None else _bounded(dimension, DIMENSION)


def check_index_params(params: object) -> IndexParams:
    if params is None:
        return IndexParams()
    if isinstance(params, IndexParams):
        raw: Mapping[str, object] = params.as_dict()
    elif isinstance(params, Mapping):
        raw = params
    else:
        raise InvalidArgumentError("index_params must be an object", field="index_params")
    unknown = set(raw) - set(_INDEX_PARAMS)
    if unknown:
        raise InvalidArgumentError(
            f"unknown index_params {', '.join(sorted(unknown))}; known: {', '.join(_INDEX_PARAMS)}",
            field="index_params",
        )
    values: dict[str, int] = IndexParams().as_dict()
    for key, value in raw.items():
        values[key] = _bounded(value, _INDEX_PARAMS[key])
    return IndexParams(**values)


def as_matrix(
    vectors: Sequence[Sequence[float] | Vector] | Matrix,
    dimension: int | None,
    metric: Metric,
    field: str = "embedding",
) -> Matrix:
    """Stack vectors into a C-contiguous float32 ``(n, d)`` matrix, checking every rule."""
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(
            f"{field} must be a list of numbers of one length", field=field
        ) from exc
    if matrix.ndim != 2:
        raise InvalidVectorError(f"{field} must be a flat list of numbers", field=field)
    if matrix.shape[1] == 0:
        raise InvalidVectorError(f"{field} must not be empty", field=field)
    if dimension is not None and matrix.shape[1] != dimension:
        raise DimensionMismatchError(dimension, int(matrix.shape[1]), what=field)
    if not np.isfinite(matrix).all():
        raise InvalidVectorError(f"{field} contains NaN or infinity", field=field)
    if metric == "cosine" and matrix.size and not np.all(np.any(matrix != 0, axis=1)):
        raise InvalidVectorError(
            f"{field} is a zero vector, which has no direction for cosine", field=field
        )
    return np.ascontiguousarray(matrix)


def as_vector(
    vector: Sequence[float] | Vector, dimension: int | None, metric: Metric, field: str
) -> Vector:
    """One query or chunk vector as float32, checking every rule."""
    arr = _as_float32(vector)
    if arr is None or arr.ndim != 1:
        raise InvalidVectorError(f"{field} must be a flat list of numbers", field=field)
    size = arr.shape[0]
    if size and (dimension is None or size == dimension):
        # The common case in two numpy calls: the squared norm, in float64 (it cannot overflow
        # there), is finite only if every element is, and positive only if one is not zero.
        wide = arr.astype(np.float64)
        if 0.0 < float(wide @ wide) < math.inf:
            fast: Vector = np.ascontiguousarray(arr)
            return fast
    result: Vector = as_matrix(arr[None, :], dimension, metric, field)[0]
    return result


def _as_float32(vector: object) -> Vector | None:
    """``vector`` as a float32 array if it is numeric (see :func:`_numeric`), else ``None``."""
    if isinstance(vector, list | tuple) and set(map(type, vector)) <= _PLAIN_NUMBERS:
        plain: Vector = np.asarray(vector, dtype=np.float32)  # the usual JSON list
        return plain
    if not _numeric(vector):
        return None
    arr: Vector = np.asarray(vector, dtype=np.float32)
    return arr


def _numeric(vector: object) -> bool:
    if isinstance(vector, np.ndarray):
        return vector.dtype.kind in "fiub"
    if isinstance(vector, str | bytes | Mapping) or not isinstance(vector, Sequence):
        return False
    return all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in vector)
