"""The bounds of every input, declared once.

The domain enforces them (``arrwdb.domain.validation``) and the wire Structs are built from them
(``arrwdb.transports.messages``), so a bound changed here changes the check, its message, the
OpenAPI document and every transport together. Pure Python: this module imports only the
standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Bound:
    """The inclusive range ``low..high`` an integer input must lie in (for a name: its length
    in characters). ``name`` is the input as errors name it (their ``field``)."""

    name: str
    low: int
    high: int

    def __contains__(self, value: object) -> bool:
        """Whether ``value`` is an integer (not a bool) in ``low..high``."""
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def __str__(self) -> str:
        return f"{self.low}..{self.high}"


#: How many results a search returns.
K: Final = Bound("k", 1, 1000)
#: The HNSW search breadth of one query.
EF: Final = Bound("ef", 1, 10_000)
#: The length of a library's vectors.
DIMENSION: Final = Bound("dimension", 1, 65_536)
#: The length of a library's name or of a client-chosen document id.
NAME_LENGTH: Final = Bound("name", 1, 256)
#: How many documents one page lists.
PAGE_LIMIT: Final = Bound("limit", 1, 1000)
#: HNSW: links per node.
HNSW_M: Final = Bound("index_params.m", 2, 128)
#: HNSW: the search breadth while the graph is built.
EF_CONSTRUCTION: Final = Bound("index_params.ef_construction", 1, 10_000)
#: HNSW: the default search breadth of a library's queries.
EF_SEARCH: Final = Bound("index_params.ef_search", 1, 10_000)
#: How deeply filter combinators (``$and``, ``$or``, ``$not``) may nest.
FILTER_DEPTH: Final = 32
#: The integers a metadata value may be (what every store can keep: int64 and uint64).
METADATA_INT: Final = Bound("metadata", -(2**63), 2**64 - 1)


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds a server may set lower or higher (``Settings``: ``max_metadata_bytes``, ...).
    Beyond a byte limit: ``PayloadTooLargeError`` (413); beyond a count: ``LimitExceededError``
    (422); each names the limit."""

    #: what one metadata object (of a document, a chunk or a library) may take, as UTF-8
    metadata_bytes: int = 64 * 1024
    #: what one document's text (``text``, or its chunks' texts together) may take
    text_bytes: int = 4 * 1024 * 1024
    #: the longest vectors a library may hold
    dimension: int = 16_384
    #: how many libraries a store may hold
    libraries: int = 10_000
    #: how many live watches one library may have
    watches_per_library: int = 10_000
