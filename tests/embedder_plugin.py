"""Embedders as a package would register them in the ``arrwdb.embedders`` entry-point group
(the registry tests load them through real ``importlib.metadata.EntryPoint`` objects)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from arrwdb.domain.models import Matrix


def letters(texts: list[str]) -> list[list[float]]:
    """A function embedder: counts of a, e, i, o and u, plus one (never a zero vector)."""
    return [[1.0 + text.lower().count(c) for c in "aeiou"] for text in texts]


class Lengths:
    """An ``Embedder`` class (the registry makes it with no arguments): text length features."""

    name = "lengths"
    dimension = 2

    def embed(self, texts: Sequence[str], dimension: int | None = None) -> Matrix:
        return np.array([[1.0 + len(t), 1.0 + len(t.split())] for t in texts], dtype=np.float32)


def broken_import() -> None:
    raise AssertionError("never called")


NOT_AN_EMBEDDER = 42
