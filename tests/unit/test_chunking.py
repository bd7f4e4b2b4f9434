"""The chunker: bounded sizes, natural boundaries, overlap on word boundaries, nothing lost."""

from __future__ import annotations

import itertools
import re
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arrwdb.domain.chunking import Chunker
from arrwdb.domain.errors import InvalidArgumentError


def tokens(text: str, size: int) -> list[str]:
    """The input's words, with words longer than ``size`` cut as the chunker cuts them."""
    return [w[i : i + size] for w in text.split() for i in range(0, len(w), size)]


def overlaps(previous: str, chunk: str, limit: int) -> list[int]:
    """How many leading words of ``chunk`` may be an overlap: 0, or ``j`` such that its first
    ``j`` words are the tail of ``previous``, copied verbatim, at most ``limit`` characters."""
    found = [0]
    starts = [m.start() for m in re.finditer(r"\S+", previous)]
    for j, start in enumerate(reversed(starts), start=1):
        tail = previous[start:]
        if len(tail) > limit:
            break
        if chunk.startswith(tail) and len(chunk) > len(tail) and chunk[len(tail)].isspace():
            found.append(j)
    return found


def reconstructs(chunks: list[str], words: list[str], limit: int) -> bool:
    """Whether the chunks, each minus some valid overlap, give exactly ``words`` in order."""
    chunk_words = [c.split() for c in chunks]

    @cache
    def from_(i: int, at: int) -> bool:
        if i == len(chunks):
            return at == len(words)
        choices = [0] if i == 0 else overlaps(chunks[i - 1], chunks[i], limit)
        for j in choices:
            own = chunk_words[i][j:]
            if own and words[at : at + len(own)] == own and from_(i + 1, at + len(own)):
                return True
        return False

    return from_(0, 0)


def check(chunker: Chunker, text: str) -> list[str]:
    """The properties every split must have; returns the chunks."""
    chunks = chunker.split(text)
    assert chunks == chunker.split(text)  # deterministic
    assert bool(chunks) == bool(text.strip())
    for chunk in chunks:
        assert 0 < len(chunk) <= chunker.size
        assert chunk == chunk.strip()
    assert reconstructs(chunks, tokens(text, chunker.size), chunker.overlap)
    if chunker.overlap == 0:
        assert [w for c in chunks for w in c.split()] == tokens(text, chunker.size)
    return chunks


# --- settings --------------------------------------------------------------------------------


def test_defaults() -> None:
    assert Chunker() == Chunker(size=1000, overlap=100)


@pytest.mark.parametrize(
    ("size", "overlap"),
    [(10, 10), (10, 11), (10, -1), (0, 0), (-5, 0), (True, 0), (10, 1.5), (10.0, 1)],
)
def test_invalid_settings(size: int, overlap: int) -> None:
    with pytest.raises(InvalidArgumentError):
        Chunker(size=size, overlap=overlap)


# --- examples --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\n \t\n"])
def test_blank_text_has_no_chunks(text: str) -> None:
    assert Chunker().split(text) == []


def test_short_text_is_one_chunk() -> None:
    assert Chunker().split("  Hello, world.\n  ") == ["Hello, world."]


def test_paragraphs_that_fit_are_kept_whole_and_packed() -> None:
    paragraphs = [f"Paragraph {i} has\na few words. And two sentences!" for i in range(6)]
    text = "\n\n".join(paragraphs)
    chunks = check(Chunker(size=120, overlap=0), text)
    for chunk in chunks:
        parts = chunk.split("\n\n")
        assert all(p in paragraphs for p in parts)
        assert len(parts) == 2  # two fit in 120 characters, three do not
    assert "\n\n".join(chunks) == text


def test_long_paragraph_is_split_on_sentences() -> None:
    sentences = [f"Sentence number {i} ends here{'.!?'[i % 3]}" for i in range(12)]
    text = " ".join(sentences)
    chunks = check(Chunker(size=70, overlap=0), text)
    assert len(chunks) > 1
    for chunk in chunks:
        assert all(s in sentences for s in re.split(r"(?<=[.!?])\s+", chunk))
    assert " ".join(chunks) == text


def test_sentences_are_kept_whole_with_overlap() -> None:
    sentences = [f"Item {i} is described in this sentence." for i in range(30)]
    chunks = check(Chunker(size=100, overlap=30), " ".join(sentences))
    for sentence in sentences:
        assert any(sentence in chunk for chunk in chunks)


def test_every_chunk_after_the_first_starts_with_an_overlap() -> None:
    text = " ".join(f"Sentence {i} says something short." for i in range(40))
    chunker = Chunker(size=120, overlap=40)
    chunks = check(chunker, text)
    assert len(chunks) > 3
    for previous, chunk in itertools.pairwise(chunks):
        assert max(overlaps(previous, chunk, chunker.overlap)) > 0
        assert chunk[0].isalnum()  # the overlap starts on a word, not mid-word


def test_a_long_sentence_is_split_on_whitespace() -> None:
    sentence = " ".join(f"word{i}" for i in range(50)) + "."
    chunks = check(Chunker(size=40, overlap=0), f"Short one. {sentence} Last one.")
    assert chunks[0] == "Short one."  # the long sentence starts a new chunk
    assert chunks[-1].endswith("word49. Last one.")  # its end takes in what follows


def test_a_word_longer_than_size_is_cut() -> None:
    assert Chunker(size=10, overlap=3).split("x" * 25) == ["x" * 10, "x" * 10, "x" * 5]
    assert Chunker(size=10, overlap=0).split("ab " + "y" * 12 + " cd") == ["ab", "y" * 10, "yy cd"]


def test_overlap_shrinks_to_keep_the_size() -> None:
    chunker = Chunker(size=20, overlap=15)
    chunks = check(chunker, "aaa bbb ccc ddd eee. " + "f" * 18 + ". g.")
    assert all(len(c) <= 20 for c in chunks)


def test_windows_line_endings_separate_paragraphs() -> None:
    assert Chunker(size=12, overlap=0).split("one two\r\n\r\nthree four") == [
        "one two",
        "three four",
    ]


# --- properties ------------------------------------------------------------------------------

texts = st.lists(
    st.sampled_from([*"abcxyzÉé1 .!?,\n\t", "  ", "\n\n", ". ", "word ", "\r\n"]),
    max_size=300,
).map("".join)


@settings(max_examples=400)
@given(text=texts, size=st.integers(1, 60), overlap_fraction=st.floats(0, 0.99))
def test_random_texts(text: str, size: int, overlap_fraction: float) -> None:
    check(Chunker(size=size, overlap=int(size * overlap_fraction)), text)


@settings(max_examples=200)
@given(
    sentences=st.lists(
        st.lists(st.sampled_from(["alpha", "beta", "gamma", "δέλτα", "e", "f9"]), min_size=1)
        .map(" ".join)
        .flatmap(lambda s: st.sampled_from([f"{s}.", f"{s}!", f"{s}?"])),
        min_size=1,
        max_size=30,
    ),
    size=st.integers(40, 200),
)
def test_sentences_shorter_than_size_are_never_cut(sentences: list[str], size: int) -> None:
    sentences = [s for s in sentences if len(s) <= size]
    chunks = check(Chunker(size=size, overlap=0), " ".join(sentences))
    pieces = [s for c in chunks for s in re.split(r"(?<=[.!?])\s+", c)]
    assert pieces == sentences
