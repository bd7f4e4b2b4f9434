"""Splitting a document's text into chunks of bounded size, on natural boundaries.

:class:`Chunker` cuts text into the largest natural pieces that fit ``size`` characters:

1. paragraphs (separated by a blank line) that fit are kept whole;
2. a longer paragraph is cut into sentences (a sentence ends with ``.``, ``!`` or ``?``
   followed by whitespace; the punctuation stays with its sentence);
3. a sentence longer than ``size`` is cut into words (on whitespace);
4. a word longer than ``size`` is cut every ``size`` characters.

The pieces are then packed greedily, in order, into chunks of at most ``size`` characters,
except that a part too long for one chunk (a paragraph, sentence or word that had to be cut)
starts a new chunk, so that it is not scattered; its last chunk may take in what follows.
Pieces of one paragraph are joined with a space, paragraphs with a blank line (``"\\n\\n"``);
whitespace inside a kept paragraph or sentence is preserved, and a chunk never starts or ends
with whitespace. With ``overlap > 0`` every chunk after the first begins with the tail of the
previous chunk: at most ``overlap`` characters, starting at a word (never mid-word), shortened
further if needed so that the chunk stays within ``size`` (so it may be empty).

Nothing is lost: the non-whitespace characters of the chunks, minus their overlaps, are those of
the text in order. The result depends only on the text and the settings (deterministic).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from arrwdb.domain.errors import InvalidArgumentError

_PARAGRAPH_BREAK: Final = re.compile(r"\n[^\S\n]*\n\s*")
_SENTENCE_BREAK: Final = re.compile(r"(?<=[.!?])\s+")
_PARAGRAPH_SEP: Final = "\n\n"
_PARAGRAPHS, _SENTENCES, _WORDS = 0, 1, 2
_SPACE: Final = " "


@dataclass(frozen=True, slots=True)
class Chunker:
    """Splits text into chunks of at most ``size`` characters (see the module docstring).

    ``overlap`` is the most characters of a chunk's tail repeated at the start of the next.
    Raises ``InvalidArgumentError`` unless ``size >= 1`` and ``0 <= overlap < size``.
    """

    size: int = 1000
    overlap: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise InvalidArgumentError(
                f"chunk size must be a positive integer, got {self.size!r}", size=self.size
            )
        if (
            isinstance(self.overlap, bool)
            or not isinstance(self.overlap, int)
            or not 0 <= self.overlap < self.size
        ):
            raise InvalidArgumentError(
                f"chunk overlap must be an integer with 0 <= overlap < size ({self.size}), "
                f"got {self.overlap!r}",
                overlap=self.overlap,
            )

    def split(self, text: str) -> list[str]:
        """The chunks of ``text``, in order; ``[]`` if it is empty or only whitespace."""
        chunks: list[str] = []
        current = ""  # the chunk being filled; never only an overlap
        for sep, piece, fresh in self._pieces(text, 0, ""):
            if not current:
                current = piece
            elif not fresh and len(current) + len(sep) + len(piece) <= self.size:
                current += sep + piece
            else:
                chunks.append(current)
                # The next piece of a hard-split word (sep "") cannot follow an overlap.
                tail = self._tail(current, self.size - len(sep) - len(piece)) if sep else ""
                current = tail + sep + piece if tail else piece
        if current:
            chunks.append(current)
        return chunks

    def _pieces(self, text: str, level: int, sep: str) -> Iterator[tuple[str, str, bool]]:
        """Cut ``text`` at ``level`` (paragraphs, sentences, words, characters) into
        ``(separator, piece, fresh)`` triples, cutting parts longer than ``size`` further.

        ``separator`` joins a piece to the one before it. ``fresh`` marks the first piece of
        ``text``: a part too long for one chunk starts a new chunk.
        """
        joiner, parts = self._parts(text, level)
        fresh = True
        for part in parts:
            if len(part) <= self.size:
                yield sep, part, fresh
            else:
                yield from self._pieces(part, level + 1, sep)
            fresh = False
            sep = joiner

    def _parts(self, text: str, level: int) -> tuple[str, list[str]]:
        if level == _PARAGRAPHS:
            return _PARAGRAPH_SEP, [p for p in map(str.strip, _PARAGRAPH_BREAK.split(text)) if p]
        if level == _SENTENCES:
            return _SPACE, [s for s in _SENTENCE_BREAK.split(text) if s]
        if level == _WORDS:
            return _SPACE, text.split()
        return "", [text[i : i + self.size] for i in range(0, len(text), self.size)]

    def _tail(self, chunk: str, room: int) -> str:
        """The longest suffix of ``chunk`` that starts at a word, has no leading whitespace
        and is at most ``min(overlap, room)`` characters long."""
        limit = min(self.overlap, room)
        if limit <= 0:
            return ""
        start = len(chunk) - limit
        if start <= 0:
            return chunk
        if not chunk[start - 1].isspace():
            # Cut mid-word: skip to the next whitespace.
            while start < len(chunk) and not chunk[start].isspace():
                start += 1
        return chunk[start:].lstrip()
