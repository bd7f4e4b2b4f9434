"""The ``minilm`` embedder: the real all-MiniLM-L6-v2 int8 model of the ``embed`` extra.

Skipped without the extra, failed without it where ``ARRWDB_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import arrwdb
import embed_model
from arrwdb.adapters.embedders.minilm import DIMENSION, MAX_TOKENS, MiniLMEmbedder
from arrwdb.adapters.embedders.registry import shared_minilm
from arrwdb.domain.errors import DimensionMismatchError, InvalidArgumentError

SENTENCES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "",
    "a",
    "Return the greatest common divisor of the specified integer arguments.",
    " ".join(["a much longer sentence about vector databases and their indexes"] * 12),
]


@pytest.fixture(scope="module")
def model() -> MiniLMEmbedder:
    embed_model.require()
    embedder = shared_minilm()
    assert isinstance(embedder, MiniLMEmbedder)
    return embedder


def test_vectors_are_384_float32_unit_rows(model: MiniLMEmbedder) -> None:
    out = model.embed(SENTENCES)
    assert model.name == "minilm"
    assert model.dimension == DIMENSION == 384
    assert out.shape == (len(SENTENCES), 384)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_it_embeds_meaning(model: MiniLMEmbedder) -> None:
    """The figures sentence-transformers gives for these three with the fp32 model:
    0.6660, 0.1046, 0.1411."""
    weather, sunny, stadium = model.embed(SENTENCES[:3])
    assert float(weather @ sunny) == pytest.approx(0.666, abs=0.02)
    assert float(weather @ stadium) == pytest.approx(0.105, abs=0.02)
    assert float(sunny @ stadium) == pytest.approx(0.141, abs=0.02)


def test_it_is_deterministic(model: MiniLMEmbedder) -> None:
    first = model.embed(SENTENCES)
    np.testing.assert_array_equal(model.embed(SENTENCES), first)
    np.testing.assert_allclose(MiniLMEmbedder(threads=1).embed(SENTENCES), first, atol=1e-5)


def test_a_text_embeds_alike_alone_and_in_batches(model: MiniLMEmbedder) -> None:
    # more than one batch of 64, of mixed lengths (each batch pads to its longest text)
    texts = [f"{s} number {i}" if i % 3 else s for i in range(150) for s in SENTENCES][:150]
    batched = model.embed(texts)
    for i in (0, 3, 6, 64, 100, 149):
        np.testing.assert_allclose(model.embed([texts[i]])[0], batched[i], atol=1e-5)


def test_empty_input(model: MiniLMEmbedder) -> None:
    assert model.embed([]).shape == (0, 384)
    empty = model.embed([""])[0]
    assert np.isfinite(empty).all()
    assert float(np.linalg.norm(empty)) == pytest.approx(1.0)


def test_a_long_text_is_cut_at_256_tokens(model: MiniLMEmbedder) -> None:
    long = " ".join(f"word{i}" for i in range(5_000))  # thousands of tokens
    longer = long + " and then something entirely different about cooking pasta"
    a, b = model.embed([long, longer])
    np.testing.assert_allclose(a, b, atol=1e-6)  # the end never reaches the model
    assert MAX_TOKENS == 256


def test_another_dimension_is_refused(model: MiniLMEmbedder) -> None:
    with pytest.raises(DimensionMismatchError, match="384"):
        model.embed(["x"], 128)
    assert model.embed(["x"], 384).shape == (1, 384)


def test_threads_may_embed_at_once(model: MiniLMEmbedder) -> None:
    expected = model.embed(SENTENCES)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(model.embed(SENTENCES))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 12
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_a_library_named_minilm_has_384_dimensions_from_the_start(model: MiniLMEmbedder) -> None:
    with arrwdb.open() as db:
        lib = db.create_library("m", embedder="minilm", index="flat")
        assert lib.dimension == 384
        with pytest.raises(InvalidArgumentError, match="differs from the 384 dimensions"):
            db.create_library("other", embedder="minilm", dimension=100)
        lib.add_documents(
            [
                {"id": "cats", "text": "Cats are small furry animals that people keep as pets."},
                {"id": "stocks", "text": "The stock market fell sharply after the announcement."},
            ]
        )
        assert lib.search("kitten", k=1).results[0].document_id == "cats"
        assert lib.search("shares lost value", k=1).results[0].document_id == "stocks"


@pytest.mark.parametrize(
    "lengths",
    [
        [5],
        [5, 5, 5, 5, 5],
        [3, 100, 4, 50, 51, 7, 120, 2],
        list(range(2, 300)),
        [9] * 200,
        [256] * 40,
    ],
)
def test_batches_take_every_text_once_and_group_similar_lengths(lengths: list[int]) -> None:
    from arrwdb.adapters.embedders.minilm import _batches

    counts = np.array(lengths, dtype=np.int64)
    batches = _batches(counts, 64, 4096)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= 64
        shortest, longest = int(counts[batch].min()), int(counts[batch].max())
        assert longest <= max(1.5 * shortest, shortest + 8)
        assert len(batch) == 1 or len(batch) * longest <= 4096
