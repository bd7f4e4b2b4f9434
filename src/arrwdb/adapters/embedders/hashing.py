"""A dependency-free text embedder: signed feature hashing of words, bigrams and trigrams.

:class:`HashingEmbedder` needs no model and no training, produces any requested dimension, and
gives the same vector for the same text in every process and on every platform (it hashes with
BLAKE2b and fixed integer mixing, never Python's randomised ``hash()``). It captures lexical
overlap, not meaning: texts that share words (or word fragments) are close by cosine.

Features of a text, after lowercasing and taking its Unicode word tokens (regex ``\\w+``):

* every word (weight 1.0),
* every pair of adjacent words (weight 0.3),
* every character trigram of each word padded as ``<word>`` (weight 0.3 each), so that a short
  word has at least one trigram and inflections (``index``/``indexes``) still overlap.

Each feature gets a 40-bit hash ``h`` (the top bits of a 64-bit BLAKE2b digest of the token;
for a bigram, a splitmix64 mix of its two words' hashes). Each distinct feature of a text
contributes ``weight * (1 + log(tf))`` (sublinear term frequency) to two coordinates, one per
slot ``j`` in ``(0, 1)``: with ``g = splitmix64(h, j)``, coordinate ``g mod d``, negated if the
top bit of ``g`` is set. Two slots halve the damage of a single hash collision. The vector is
then L2-normalised. A text without word tokens (empty, whitespace, punctuation) embeds to a
fixed unit vector whose coordinates are ``±1/sqrt(d)`` with pseudo-random signs: finite,
usable by cosine, and nearly orthogonal to the embedding of any real text.

Per batch, the Python work is tokenising and cached per-word hash lookups; counting, signing
and summing the features is vectorised with numpy over blocks of texts. A text's vector does
not depend on the other texts of its batch.

The output is a float32, C-contiguous ``(len(texts), d)`` matrix; ``d`` is 384 unless asked.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Final

import numpy as np
import numpy.typing as npt

from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.models import Matrix

DEFAULT_DIMENSION: Final = 384

_TOKEN: Final = re.compile(r"\w+")
_BLOCK: Final = 4096  # texts embedded together; bounds the temporary arrays
# A feature key is ``row << 42 | group << 40 | hash40``: the text it belongs to, its kind
# (word, bigram, trigram) and its 40-bit hash. Sorting the keys of a block brings together the
# occurrences of a feature in a text, which gives its term frequency.
_GROUP_SHIFT: Final = np.uint64(40)
_ROW_SHIFT: Final = np.uint64(42)
_HASH_MASK: Final = np.uint64((1 << 40) - 1)
_WORD, _BIGRAM, _TRIGRAM = 0, 1, 2
_BIGRAM_GROUP: Final = np.uint64(_BIGRAM << 40)
# Each feature is added to _SLOTS coordinates, so that one collision between two features
# costs half a match rather than a whole one (fewer wrong top hits for short queries).
_SLOTS: Final = 2
# Weights by group (word, bigram, trigram), tuned for ranking by word overlap.
_WEIGHTS: Final = np.array([1.0, 0.3, 0.3])

_U64 = npt.NDArray[np.uint64]
_F64 = npt.NDArray[np.float64]


class HashingEmbedder:
    """The ``hashing`` embedder (see the module docstring). Stateless and thread-safe."""

    @property
    def name(self) -> str:
        return "hashing"

    @property
    def dimension(self) -> int | None:
        """``None``: any requested dimension can be produced."""
        return None

    def embed(self, texts: Sequence[str], dimension: int | None = None) -> Matrix:
        """Embed ``texts`` into a ``(len(texts), d)`` float32 matrix of unit rows.

        ``d`` is ``dimension``, or 384 when it is ``None``. Raises ``InvalidArgumentError`` if
        ``dimension`` is not a positive integer.
        """
        d = DEFAULT_DIMENSION if dimension is None else dimension
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise InvalidArgumentError(
                f"embedding dimension must be a positive integer, got {dimension!r}",
                dimension=dimension,
            )
        out = np.empty((len(texts), d), dtype=np.float32)
        for start in range(0, len(texts), _BLOCK):
            block = texts[start : start + _BLOCK]
            out[start : start + len(block)] = _embed_block(block, d)
        return out


def _embed_block(texts: Sequence[str], d: int) -> _F64:
    keys = _feature_keys(texts)
    # Equal keys are one feature of one text, repeated tf times.
    flags = np.empty(len(keys), dtype=bool)
    flags[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=flags[1:])
    starts = np.flatnonzero(flags)
    tf = np.diff(starts, append=len(keys))
    unique = keys[starts]
    values = _WEIGHTS[(unique >> _GROUP_SHIFT) & np.uint64(3)] * (1.0 + np.log(tf))
    row_offsets = (unique >> _ROW_SHIFT).astype(np.int64) * d
    hashes = unique & _HASH_MASK
    flat = np.empty((_SLOTS, len(unique)), dtype=np.int64)
    signed = np.empty((_SLOTS, len(unique)), dtype=np.float64)
    for slot in range(_SLOTS):
        slot_hashes = _mix(hashes, np.full(len(hashes), slot, dtype=np.uint64))
        flat[slot] = row_offsets + (slot_hashes % np.uint64(d)).astype(np.int64)
        signed[slot] = np.where(slot_hashes >> np.uint64(63) == 1, -values, values)
    sums = np.bincount(flat.ravel(), weights=signed.ravel(), minlength=len(texts) * d)
    out = np.asarray(sums, dtype=np.float64).reshape(len(texts), d)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    empty = norms == 0.0
    norms[empty] = 1.0
    out /= norms[:, None]
    if empty.any():
        out[empty] = _empty_vector(d)
    return out


def _feature_keys(texts: Sequence[str]) -> _U64:
    """The sorted feature keys of a block of texts (see ``_ROW_SHIFT``)."""
    word_parts: list[bytes] = []
    trigram_parts: list[bytes] = []
    word_counts: list[int] = []
    trigram_counts: list[int] = []
    for text in texts:
        words = _TOKEN.findall(text.lower())
        word_parts.extend(map(_word_key, words))
        trigram_parts.extend(map(_trigram_keys, words))
        word_counts.append(len(words))
        trigram_counts.append(sum(map(len, words)))  # a word of n characters has n trigrams
    row_ids = np.arange(len(texts), dtype=np.uint64) << _ROW_SHIFT
    word_keys = _from_bytes(word_parts)
    word_rows = np.repeat(row_ids, word_counts)
    same_text = word_rows[1:] == word_rows[:-1]
    bigram_hashes = _mix(word_keys[:-1][same_text], word_keys[1:][same_text]) & _HASH_MASK
    keys = np.concatenate(
        [
            word_keys | word_rows,
            bigram_hashes | _BIGRAM_GROUP | word_rows[1:][same_text],
            _from_bytes(trigram_parts) | np.repeat(row_ids, trigram_counts),
        ]
    )
    keys.sort()
    return keys


def _from_bytes(parts: list[bytes]) -> _U64:
    return np.frombuffer(b"".join(parts), dtype="<u8").astype(np.uint64, copy=False)


@lru_cache(maxsize=1 << 16)
def _word_key(word: str) -> bytes:
    return _hash40(b"w", word, _WORD)


@lru_cache(maxsize=1 << 16)
def _trigram_keys(word: str) -> bytes:
    padded = f"<{word}>"
    return b"".join(_trigram_key(padded[i : i + 3]) for i in range(len(padded) - 2))


@lru_cache(maxsize=1 << 16)
def _trigram_key(trigram: str) -> bytes:
    return _hash40(b"c", trigram, _TRIGRAM)


def _hash40(namespace: bytes, token: str, group: int) -> bytes:
    """``group << 40 | hash40`` as 8 little-endian bytes; hash40 is the top of a BLAKE2b-64."""
    digest = hashlib.blake2b(namespace + token.encode("utf-8"), digest_size=8).digest()
    key = (int.from_bytes(digest, "little") >> 24) | (group << 40)
    return key.to_bytes(8, "little")


def _mix(a: _U64, b: _U64) -> _U64:
    """A 64-bit hash of the ordered pair ``(a, b)`` (splitmix64 finaliser), element-wise."""
    z = a * np.uint64(0x9E3779B97F4A7C15) + (b ^ np.uint64(0xD1B54A32D192ED03))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    result: _U64 = z ^ (z >> np.uint64(31))
    return result


@lru_cache(maxsize=64)
def _empty_vector(d: int) -> _F64:
    """The embedding of a text without words: ``±1/sqrt(d)`` with fixed pseudo-random signs."""
    signs = _mix(np.arange(d, dtype=np.uint64), np.full(d, 0xE, dtype=np.uint64)) >> np.uint64(63)
    vector: _F64 = np.where(signs == 1, -1.0, 1.0) / np.sqrt(d)
    vector.flags.writeable = False
    return vector
