"""The hits of a search as it returns them: a sequence that holds, for each hit, the chunk it
found (a ``ChunkRef``, taken under the library's read lock) and its score, and builds the
``SearchHit`` objects the first time it is read.

A search's own work is then the index search and a lookup per hit; a caller that reads every
hit (a transport encoding the answer) pays for the objects once, and one that reads only the
first, or only the count, pays for no more. What it shows never changes: the refs are the
chunks as they were when the search ran (a later change of the library replaces a ref, it
does not change one), so reading the hits later gives what reading them at once would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import fields
from typing import Any, overload

from arrwdb.domain.models import SearchHit

#: What a search hit needs of a chunk, kept beside the index: ``(chunk_id, document_id,
#: document title, text, metadata, position)``, the metadata being the document's merged with
#: the chunk's (chunk wins). A plain tuple, not a dataclass: a hit unpacks one in a single
#: step (~20% less time per hit than six attribute reads).
ChunkRef = tuple[str, str, str, str, Mapping[str, Any], int]


class Hits(Sequence[SearchHit]):
    """The hits of one query, best first: ``len``, indexing, slicing, iteration and ``==``
    (with another ``Hits``, a list or a tuple of hits) as a list of ``SearchHit`` has them."""

    __slots__ = ("_hits", "_refs", "_scores")

    def __init__(self, refs: list[ChunkRef], scores: list[float]) -> None:
        self._refs: list[ChunkRef] | None = refs
        self._scores: list[float] | None = scores
        self._hits: list[SearchHit] | None = None

    def _built(self) -> list[SearchHit]:
        hits = self._hits
        if hits is None:
            refs, scores = self._refs, self._scores
            assert refs is not None
            assert scores is not None
            # (two threads reading at once may both build them: the same hits either way)
            hits = self._hits = build_hits(refs, scores)
            self._refs = self._scores = None
        return hits

    def __len__(self) -> int:
        refs = self._refs
        return len(refs) if refs is not None else len(self._built())

    @overload
    def __getitem__(self, i: int) -> SearchHit: ...

    @overload
    def __getitem__(self, i: slice) -> list[SearchHit]: ...

    def __getitem__(self, i: int | slice) -> SearchHit | list[SearchHit]:
        return self._built()[i]

    def __iter__(self) -> Iterator[SearchHit]:
        return iter(self._built())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Hits):
            return self._built() == other._built()
        if isinstance(other, list | tuple):
            return self._built() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # (mutable-looking, as a list: unhashable)

    def __repr__(self) -> str:
        return repr(self._built())

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (and deep-copied) as its hits
        return (_rebuilt, (self._built(),))


def _rebuilt(hits: list[SearchHit]) -> Hits:
    out = Hits([], [])
    out._refs = out._scores = None
    out._hits = list(hits)
    return out


def build_hits(refs: Sequence[ChunkRef], scores: Sequence[float]) -> list[SearchHit]:
    """``SearchHit`` objects of ``refs[i]`` scored ``scores[i]``."""
    new = _new_hit
    set_chunk, set_doc, set_title, set_text, set_score, set_meta, set_pos, set_emb = _SETTERS
    out: list[SearchHit] = []
    append = out.append
    for ref, score in zip(refs, scores, strict=True):
        chunk_id, document_id, title, text, metadata, position = ref
        # SearchHit(...) field by field (see _SETTERS): the same object, ~2x faster
        hit = new(SearchHit)
        set_chunk(hit, chunk_id)
        set_doc(hit, document_id)
        set_title(hit, title)
        set_text(hit, text)
        set_score(hit, score)
        set_meta(hit, metadata)
        set_pos(hit, position)
        set_emb(hit, None)
        append(hit)
    return out


def _hit_setters() -> tuple[Callable[[SearchHit, Any], None], ...]:
    """Setters of ``SearchHit``'s slots, in the order ``build_hits`` uses them.

    ``SearchHit`` is a frozen slotted dataclass: its generated ``__init__`` sets each field with
    ``object.__setattr__``, which costs about twice as much as calling the slot's own setter.
    So ``build_hits`` sets the slots directly. That gives the very object ``SearchHit(...)``
    would, as long as the class has exactly these fields and no ``__post_init__``: if that ever
    changes, importing this module fails (so every test does) until ``build_hits`` is brought
    in line.
    """
    names = tuple(f.name for f in fields(SearchHit))
    slots = getattr(SearchHit, "__slots__", ())
    if names != _HIT_FIELDS or tuple(slots) != _HIT_FIELDS or hasattr(SearchHit, "__post_init__"):
        raise AssertionError(f"SearchHit has changed ({names}): update build_hits")
    return tuple(getattr(SearchHit, name).__set__ for name in _HIT_FIELDS)


_HIT_FIELDS = (
    "chunk_id",
    "document_id",
    "document_title",
    "text",
    "score",
    "metadata",
    "position",
    "embedding",
)
_SETTERS = _hit_setters()
_new_hit = object.__new__
