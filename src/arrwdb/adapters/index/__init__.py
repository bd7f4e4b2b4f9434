"""Vector index adapters: ``flat`` (:class:`ExactIndex`) and ``hnsw`` (:class:`HnswIndex`).

:func:`make_index` is the ``IndexFactory`` the container hands to the service.
"""

from __future__ import annotations

from arrwdb.adapters.index.exact import ExactIndex
from arrwdb.adapters.index.hnsw import HnswIndex
from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.models import INDEX_KINDS, IndexParams, Metric
from arrwdb.domain.ports import IndexFactory, VectorIndex

__all__ = ["ExactIndex", "HnswIndex", "make_index"]


def make_index(kind: str, dimension: int, metric: Metric, params: IndexParams) -> VectorIndex:
    """An empty index of ``kind``; raises ``InvalidArgumentError`` for an unknown kind."""
    if kind == "flat":
        return ExactIndex(dimension, metric)
    if kind == "hnsw":
        return HnswIndex(dimension, metric, params)
    known = ", ".join(INDEX_KINDS)
    raise InvalidArgumentError(
        f"unknown index kind {kind!r}; known kinds: {known}", kind=kind, known=list(INDEX_KINDS)
    )


# Checked by mypy: make_index implements the port.
_factory: IndexFactory = make_index
