"""The ``WatchStore`` contract (where REST watches are kept), run against every adapter: records
read back exactly (the query vector to the bit), deletion (and the expiry that a listener seen
meanwhile prevents), liveness only moving forward, and a second opening seeing the same watches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

import pg
from arrwdb.adapters.watches.file import FILE_NAME, FileWatches
from arrwdb.adapters.watches.memory import MemoryWatches
from arrwdb.domain.errors import StorageError
from arrwdb.domain.models import new_id, utcnow
from arrwdb.domain.ports import StoredWatch, WatchStore
from arrwdb.domain.watches import Watch

Make = Callable[[], WatchStore]


@pytest.fixture(params=["memory", "file", "postgres"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """Makes the adapter; a second call opens the same watches again (memory: the same one)."""
    if request.param == "memory":
        store = MemoryWatches()
        yield lambda: store
    elif request.param == "file":
        yield lambda: FileWatches(tmp_path)
    else:
        pg.require()
        from arrwdb.adapters.watches.postgres import PostgresWatches

        schema = pg.new_schema()
        opened: list[PostgresWatches] = []

        def open_watches() -> WatchStore:
            opened.append(PostgresWatches(pg.url(), schema))
            return opened[-1]

        yield open_watches
        for watches in opened:
            watches.close()
        pg.drop(schema)


def stored(
    library_id: str = "lib-1",
    *,
    k: int | None = 5,
    threshold: float | None = None,
    filter: dict[str, object] | None = None,
    query_text: str | None = None,
    seen_at: float | None = None,
    age: float = 0.0,
) -> StoredWatch:
    rng = np.random.default_rng()
    vector = rng.standard_normal(7).astype(np.float32)
    vector[0] = np.float32(1.0) / np.float32(3.0)  # not exact in decimal: kept to the bit
    watch = Watch(
        id=new_id(),
        library_id=library_id,
        k=k,
        threshold=threshold,
        filter=filter,
        created_at=utcnow() - timedelta(seconds=age),
        vector=vector,
        query_text=query_text,
    )
    return StoredWatch(watch, position=42, seen_at=time.time() if seen_at is None else seen_at)


def same(a: StoredWatch, b: StoredWatch) -> bool:
    return (
        a == b  # every field but the vector (not compared by the dataclass)
        and b.watch.vector.dtype == np.float32
        and np.array_equal(a.watch.vector, b.watch.vector)
    )


def test_shared_only_on_postgresql(make: Make, request: pytest.FixtureRequest) -> None:
    assert make().shared is (request.node.callspec.params["make"] == "postgres")


def test_saved_watches_are_read_back_exactly_by_another_opening(make: Make) -> None:
    store = make()
    assert store.load_watches() == []
    assert store.seen() == {}
    top = stored(filter={"lang": {"$in": ["en", "fr"]}, "n": 1.5}, query_text="a query", age=2)
    match = stored("lib-2", k=None, threshold=0.75)
    store.save_watch(match)
    store.save_watch(top)
    again = make()
    loaded = again.load_watches()
    assert [w.watch.id for w in loaded] == [top.watch.id, match.watch.id]  # oldest first
    assert same(top, loaded[0])
    assert same(match, loaded[1])
    assert again.seen() == {top.watch.id: top.seen_at, match.watch.id: match.seen_at}
    only = again.load_watches([match.watch.id, "no-such-watch"])
    assert len(only) == 1
    assert same(match, only[0])
    assert again.load_watches([]) == []


def test_saving_a_watch_again_replaces_it(make: Make) -> None:
    store = make()
    first = stored()
    store.save_watch(first)
    later = StoredWatch(first.watch, position=first.position + 1, seen_at=first.seen_at + 5)
    store.save_watch(later)
    loaded = make().load_watches()
    assert len(loaded) == 1
    assert same(later, loaded[0])


def test_a_deleted_watch_is_gone_for_good(make: Make) -> None:
    store = make()
    a, b = stored(), stored()
    store.save_watch(a)
    store.save_watch(b)
    assert store.delete_watch(a.watch.id) is True
    assert store.delete_watch(a.watch.id) is False
    assert store.delete_watch("no-such-watch") is False
    again = make()
    assert [w.watch.id for w in again.load_watches()] == [b.watch.id]
    assert again.load_watches([a.watch.id]) == []
    assert list(again.seen()) == [b.watch.id]


def test_an_expiry_deletes_only_a_watch_not_seen_since_its_cutoff(make: Make) -> None:
    store = make()
    now = time.time()
    idle = stored(seen_at=now - 100)
    store.save_watch(idle)
    assert store.delete_watch(idle.watch.id, idle_before=now - 150) is False  # not idle enough
    store.touch({idle.watch.id: now - 10})  # a listener seen (on some server) meanwhile
    assert store.delete_watch(idle.watch.id, idle_before=now - 50) is False
    assert make().seen() == {idle.watch.id: now - 10}
    assert store.delete_watch(idle.watch.id, idle_before=now - 10) is True
    assert make().load_watches() == []


def test_liveness_only_moves_forward(make: Make) -> None:
    store = make()
    now = time.time()
    a, b = stored(seen_at=now - 60), stored(seen_at=now - 60)
    store.save_watch(a)
    store.save_watch(b)
    store.touch({})
    store.touch({a.watch.id: now, b.watch.id: now - 120, "no-such-watch": now})
    again = make()
    assert again.seen() == {a.watch.id: now, b.watch.id: now - 60}
    loaded = {w.watch.id: w for w in again.load_watches()}
    assert loaded[a.watch.id].seen_at == now
    assert same(StoredWatch(a.watch, a.position, now), loaded[a.watch.id])
    assert "no-such-watch" not in again.seen()


def test_a_damaged_watches_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text('{"format": 1, "watches": [{"id": ')
    with pytest.raises(StorageError, match="damaged"):
        FileWatches(tmp_path).load_watches()
    (tmp_path / FILE_NAME).write_text('{"format": 99, "watches": []}')
    with pytest.raises(StorageError, match="newer"):
        FileWatches(tmp_path).seen()
