"""The hashing embedder: the Embedder contract, stability across processes, and ranking."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import numpy.typing as npt
import pytest

from arrwdb.adapters.embedders.hashing import DEFAULT_DIMENSION, HashingEmbedder
from arrwdb.domain.errors import InvalidArgumentError
from arrwdb.domain.ports import Embedder

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "   \n\t ",
    "?!... ---",
    "Ünïcödé wörds, 日本語のテキスト, and ÉCOLE école",
    "x",
    "word " * 5000,
    "a" * 10_000,
]

# The first vector below, at d=16, computed once. Stored embeddings depend on these values:
# a change here means every library built with the hashing embedder must be re-embedded.
PINNED_TEXT = "The quick brown fox jumps over the lazy dog."
PINNED_VECTOR = [
    0.2707848, 0.0155796, -0.3892532, 0.2200127, 0.2200127, -0.019613, 0.1015443, 0.1184684,
    0.0663517, -0.2382812, 0.6081061, 0.0676962, -0.3723291, 0.1692405, -0.1015443, -0.2005844,
]  # fmt: skip


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


def test_implements_the_embedder_port(embedder: HashingEmbedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.name == "hashing"
    assert embedder.dimension is None


def test_shape_dtype_finite_and_unit_norm(embedder: HashingEmbedder) -> None:
    vectors = embedder.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), DEFAULT_DIMENSION) == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dimension", [1, 2, 7, 64, 384, 1000, 4096])
def test_any_requested_dimension(embedder: HashingEmbedder, dimension: int) -> None:
    vectors = embedder.embed(TEXTS, dimension)
    assert vectors.shape == (len(TEXTS), dimension)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("dimension", [0, -1, True, 2.0, "384"])
def test_invalid_dimension(embedder: HashingEmbedder, dimension: object) -> None:
    with pytest.raises(InvalidArgumentError):
        embedder.embed(["text"], dimension)  # type: ignore[arg-type]


def test_no_texts(embedder: HashingEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 384)
    assert embedder.embed((), 12).shape == (0, 12)


def test_text_without_words_has_a_fixed_unit_vector(embedder: HashingEmbedder) -> None:
    blank = embedder.embed(["", " ", "!?", "\n--\n"])
    assert (blank == blank[0]).all()
    np.testing.assert_allclose(np.abs(blank[0]), 1 / np.sqrt(384), rtol=1e-6)
    real = embedder.embed(CORPUS)
    assert np.abs(real @ blank[0]).max() < 0.3  # nearly orthogonal to real texts


def test_deterministic_and_independent_of_the_batch(embedder: HashingEmbedder) -> None:
    batch = embedder.embed(TEXTS)
    assert np.array_equal(batch, HashingEmbedder().embed(TEXTS))
    one_by_one = np.vstack([embedder.embed([t]) for t in TEXTS])
    assert np.array_equal(batch, one_by_one)


def test_batches_larger_than_a_block(embedder: HashingEmbedder) -> None:
    texts = [f"document number {i} about topic {i % 7}" for i in range(5000)]
    vectors = embedder.embed(texts, 32)
    assert vectors.shape == (5000, 32)
    for i in (0, 4095, 4096, 4999):
        assert np.array_equal(vectors[i], embedder.embed([texts[i]], 32)[0])


def test_pinned_vector(embedder: HashingEmbedder) -> None:
    vector = embedder.embed([PINNED_TEXT], 16)[0]
    np.testing.assert_allclose(vector, PINNED_VECTOR, atol=1e-6)


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_same_vectors_in_another_process(embedder: HashingEmbedder, hash_seed: str) -> None:
    """Python's str hash is randomised per process; the embedder must not depend on it."""
    code = (
        "import sys\n"
        "from arrwdb.adapters.embedders.hashing import HashingEmbedder\n"
        "texts = sys.stdin.read().split('\\x1e')\n"
        "sys.stdout.write(HashingEmbedder().embed(texts, 100).tobytes().hex())\n"
    )
    texts = [*TEXTS[:6], PINNED_TEXT, *CORPUS]
    result = subprocess.run(
        [sys.executable, "-c", code],
        input="\x1e".join(texts),
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        check=True,
        timeout=120,
    )
    assert result.stdout == embedder.embed(texts, 100).tobytes().hex()


def test_case_insensitive_and_ignores_punctuation(embedder: HashingEmbedder) -> None:
    a, b = embedder.embed(["Vector Databases, INDEX!", "vector databases index"])
    assert np.array_equal(a, b)


def test_word_order_matters_a_little(embedder: HashingEmbedder) -> None:
    a, b, c = embedder.embed(["dog bites man", "man bites dog", "cat chases mouse"])
    assert 0.5 < float(a @ b) < 0.99
    assert float(a @ c) < 0.3


def test_inflections_are_close(embedder: HashingEmbedder) -> None:
    query, inflected, unrelated = embedder.embed(["indexing", "indexes", "volcano"])
    assert float(query @ inflected) > float(query @ unrelated) + 0.2


# --- ranking ---------------------------------------------------------------------------------

CORPUS = [
    "The ocean tides are driven by the gravitational pull of the moon.",
    "Coral reefs in warm ocean water host thousands of fish species.",
    "A sourdough loaf needs flour, water, salt and a lively starter.",
    "The violinist tuned her instrument before the evening concert.",
    "Volcanic eruptions release ash and sulfur dioxide into the atmosphere.",
    "Python dictionaries map hashable keys to arbitrary values.",
    "The marathon runner crossed the finish line after three hours.",
    "Honeybees communicate the location of flowers with a waggle dance.",
    "Quantum computers use qubits that can exist in superposition.",
    "The medieval castle was surrounded by a deep moat and thick walls.",
    "Espresso is brewed by forcing hot water through finely ground coffee.",
    "Glaciers carve valleys as they slowly flow downhill under their own weight.",
    "The orchestra played a symphony by Beethoven at the concert hall.",
    "Vector databases index embeddings for fast nearest neighbour search.",
    "Tomatoes, basil and mozzarella make a simple summer salad.",
    "The chess grandmaster sacrificed a knight to open the king's defences.",
    "Solar panels convert sunlight into electricity using photovoltaic cells.",
    "The detective found a muddy footprint beneath the library window.",
    "Migrating geese fly south in a V formation every autumn.",
    "Compilers translate source code into machine instructions.",
]
STOPWORDS = frozenset(
    ["the", "a", "an", "and", "of", "in", "by", "to", "into", "for", "with", "as", "at", "that"]
)


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def longest_words(text: str, n: int) -> list[str]:
    """The ``n`` longest content words of ``text`` (the first of equally long ones)."""
    content = [w for w in dict.fromkeys(re.findall(r"\w+", text.lower())) if w not in STOPWORDS]
    return sorted(content, key=len, reverse=True)[:n]


def scores(embedder: HashingEmbedder, query: str) -> npt.NDArray[np.float32]:
    result: npt.NDArray[np.float32] = embedder.embed(CORPUS) @ embedder.embed([query])[0]
    return result


@pytest.mark.parametrize("n_words", [1, 2, 3])
@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_a_query_of_words_from_a_document_ranks_it_first(
    embedder: HashingEmbedder, index: int, n_words: int
) -> None:
    query = " ".join(longest_words(CORPUS[index], n_words))
    assert int(np.argmax(scores(embedder, query))) == index, query


def _containing_rank_above_the_rest(embedder: HashingEmbedder, query: str) -> None:
    s = scores(embedder, query)
    contains = np.array([bool(words(query) & words(doc)) for doc in CORPUS])
    assert contains.any()
    assert (~contains).any()
    assert s[contains].min() > s[~contains].max(), query


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_documents_sharing_query_words_rank_above_the_rest(
    embedder: HashingEmbedder, index: int
) -> None:
    _containing_rank_above_the_rest(embedder, " ".join(longest_words(CORPUS[index], 2)))


def test_documents_sharing_a_common_word_rank_above_the_rest(embedder: HashingEmbedder) -> None:
    counts = Counter(w for doc in CORPUS for w in words(doc) - STOPWORDS)
    shared = sorted(w for w, n in counts.items() if n > 1)
    assert shared == ["concert", "ocean", "water"]
    for word in shared:
        _containing_rank_above_the_rest(embedder, word)
