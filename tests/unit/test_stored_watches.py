"""REST (stored) watches: they survive a restart with their id and results, a deletion (of the
watch or of its library) is for good, an idle one expires after the watch TTL while a listener
keeps it alive, and on PostgreSQL every server sees, serves and deletes the same watches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pg
from arrwdb.adapters.watches.file import FileWatches
from arrwdb.config import Settings
from arrwdb.container import Container, build_container
from arrwdb.domain.errors import SubscriptionClosedError, WatchNotFoundError
from arrwdb.domain.models import utcnow
from arrwdb.domain.ports import StoredWatch
from arrwdb.domain.service import VectorDBService
from arrwdb.domain.watches import (
    CLOSED_DELETED,
    CLOSED_LIBRARY_DELETED,
    WATCH_ENTERED,
    WATCH_LEFT,
    WATCH_READY,
    Watch,
    WatchEvent,
    WatchListener,
)

Open = Callable[..., VectorDBService]

VECTORS = {
    "north": [0.0, 1.0, 0.0],
    "north-east": [0.7, 0.7, 0.0],
    "east": [1.0, 0.0, 0.0],
    "up": [0.0, 0.0, 1.0],
}


@pytest.fixture
def opened() -> Iterator[dict[VectorDBService, Container]]:
    """Every service the test opened -> its container (each closed at the end)."""
    containers: dict[VectorDBService, Container] = {}
    yield containers
    for container in containers.values():
        container.shutdown_resources()


@pytest.fixture
def open_service(opened: dict[VectorDBService, Container]) -> Open:
    """Opens a service through the real container with these ``Settings`` fields."""

    def open_one(**options: Any) -> VectorDBService:
        container = build_container(Settings(**options))
        container.init_resources()
        service = container.service()
        opened[service] = container
        return service

    return open_one


def close(opened: dict[VectorDBService, Container], service: VectorDBService) -> None:
    opened.pop(service).shutdown_resources()


def fill(service: VectorDBService, name: str = "places") -> str:
    library = service.create_library(name, dimension=3, index="flat", embedder=None)
    for title, vector in VECTORS.items():
        service.add_document(
            library.id, {"title": title, "chunks": [{"text": title, "embedding": vector}]}
        )
    return library.id


def register(service: VectorDBService, library_id: str, k: int = 2) -> Watch:
    watch = service.watching.prepare(library_id, query_vector=[1.0, 0.2, 0.0], k=k)
    service.watching.register(watch, stored=True)
    return watch


def first(listener: WatchListener, timeout: float = 5.0) -> WatchEvent:
    event = listener.get(timeout=timeout)
    assert event is not None, "no event in time"
    return event


def titles(event: WatchEvent) -> list[str]:
    assert event.type == WATCH_READY
    return [hit["document_title"] for hit in event.data["results"]]


def eventually(check: Callable[[], bool], within: float, what: str) -> float:
    """Wait for ``check()``; returns how long it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            pytest.fail(f"{what} did not happen within {within} s")
        time.sleep(0.02)
    return time.monotonic() - start


def gone(service: VectorDBService, watch_id: str) -> bool:
    try:
        service.watching.get(watch_id)
    except WatchNotFoundError:
        return True
    return False


def keeper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "arrwdb-watch-keeper"]


# -- one server ---------------------------------------------------------------------------------


def test_a_stored_watch_survives_a_restart_with_its_id_and_results(
    tmp_path: Path, open_service: Open, opened: dict[VectorDBService, Container]
) -> None:
    data = str(tmp_path / "data")
    service = open_service(storage="disk", data_dir=data)
    library_id = fill(service)
    watch = register(service, library_id)
    floored = service.watching.prepare(library_id, query_vector=[0.0, 0.0, 1.0], k=1, threshold=0.5)
    service.watching.register(floored, stored=True)
    unstored = service.watching.prepare(library_id, query_vector=[0.0, 1.0, 0.0], k=1)
    service.watching.register(unstored)  # a WebSocket's: ends with the process
    ready = first(service.watching.listen(watch.id))
    before = titles(ready)
    restored_ids = {hit["document_title"]: hit["document_id"] for hit in ready.data["results"]}
    assert before == ["east", "north-east"]
    close(opened, service)

    again = open_service(storage="disk", data_dir=data)
    kept = again.watching.list(library_id)
    assert sorted(w.id for w in kept) == sorted([watch.id, floored.id])
    restored = again.watching.get(watch.id, library_id).watch
    assert restored.info() == watch.info()
    ready = first(again.watching.listen(watch.id))
    assert titles(ready) == before
    assert ready.data["event_id"] == str(again.last_event_id)
    assert titles(first(again.watching.listen(floored.id))) == ["up"]
    with pytest.raises(WatchNotFoundError):
        again.watching.get(unstored.id)
    # and it goes on following writes after the restart
    listener = again.watching.listen(watch.id)
    first(listener)
    again.add_document(
        library_id, {"title": "east-2", "chunks": [{"text": "e", "embedding": [1.0, 0.1, 0.0]}]}
    )
    left, entered = first(listener), first(listener)
    assert (left.type, left.data["document_id"], left.data["reason"]) == (
        WATCH_LEFT,
        restored_ids["north-east"],
        "outranked",
    )
    assert (entered.type, entered.data["rank"]) == (WATCH_ENTERED, 0)
    assert [left.id, entered.id] == [f"{again.last_event_id}.0", f"{again.last_event_id}.1"]


def test_a_deleted_stored_watch_is_gone_for_good(
    tmp_path: Path, open_service: Open, opened: dict[VectorDBService, Container]
) -> None:
    data = str(tmp_path / "data")
    service = open_service(storage="disk", data_dir=data)
    library_id = fill(service)
    kept, deleted = register(service, library_id), register(service, library_id)
    listener = service.watching.listen(deleted.id)
    first(listener)
    service.watching.stop(deleted.id, library_id)
    with pytest.raises(SubscriptionClosedError):
        listener.get(timeout=1)
    assert listener.closed_reason == CLOSED_DELETED
    with pytest.raises(WatchNotFoundError):
        service.watching.stop(deleted.id, library_id)
    assert [w.watch.id for w in FileWatches(data).load_watches()] == [kept.id]
    close(opened, service)

    again = open_service(storage="disk", data_dir=data)
    assert [w.id for w in again.watching.list(library_id)] == [kept.id]
    assert gone(again, deleted.id)


def test_deleting_a_library_deletes_its_stored_watches(
    tmp_path: Path, open_service: Open, opened: dict[VectorDBService, Container]
) -> None:
    data = str(tmp_path / "data")
    service = open_service(storage="disk", data_dir=data)
    doomed, other = fill(service, "doomed"), fill(service, "other")
    lost, kept = register(service, doomed), register(service, other)
    listener = service.watching.listen(lost.id)
    first(listener)
    service.delete_library(doomed)
    with pytest.raises(SubscriptionClosedError):
        listener.get(timeout=1)
    assert listener.closed_reason == CLOSED_LIBRARY_DELETED
    assert [w.watch.id for w in FileWatches(data).load_watches()] == [kept.id]
    close(opened, service)
    again = open_service(storage="disk", data_dir=data)
    assert gone(again, lost.id)
    assert [w.id for w in again.watching.list(other)] == [kept.id]


def test_a_stored_watch_of_a_library_that_no_longer_exists_is_deleted_at_load(
    tmp_path: Path, open_service: Open, opened: dict[VectorDBService, Container]
) -> None:
    data = str(tmp_path / "data")
    service = open_service(storage="disk", data_dir=data)
    library_id = fill(service)
    kept = register(service, library_id)
    close(opened, service)
    orphan = Watch("orphan", "no-such-library", 3, None, None, utcnow(), kept.vector)
    FileWatches(data).save_watch(StoredWatch(orphan, position=1, seen_at=time.time()))

    again = open_service(storage="disk", data_dir=data)
    assert gone(again, "orphan")
    assert [w.watch.id for w in FileWatches(data).load_watches()] == [kept.id]


def test_a_closed_listener_reads_what_was_held_when_it_was_closed_and_no_later_event(
    open_service: Open,
) -> None:
    """A listener closed (its connection cut) hands over the events it held, then ends; what
    happens later is for the reader that resumes from its last id, not for it."""
    service = open_service()
    library_id = fill(service)
    watch = register(service, library_id, k=1)
    listener = service.watching.listen(watch.id)
    assert titles(first(listener)) == ["east"]
    doc = service.add_document(
        library_id, {"title": "held", "chunks": [{"text": "x", "embedding": [1.0, 0.2, 0.0]}]}
    )
    listener.close()
    service.delete_document(library_id, doc.id)
    held = [first(listener), first(listener)]
    assert [e.type for e in held] == [WATCH_LEFT, WATCH_ENTERED]
    assert held[1].data["document_id"] == doc.id
    with pytest.raises(SubscriptionClosedError):
        listener.get(timeout=1)
    resumed = service.watching.listen(watch.id, since=held[1].id)
    later = [first(resumed), first(resumed)]
    assert [e.type for e in later] == [WATCH_LEFT, WATCH_ENTERED]
    assert later[0].data["document_id"] == doc.id
    assert later[0].data["reason"] == "deleted"


def test_an_idle_stored_watch_expires_and_a_listener_keeps_it_alive(open_service: Open) -> None:
    service = open_service(watch_ttl=0.5)
    library_id = fill(service)
    idle = register(service, library_id)
    listened = register(service, library_id)
    unstored = service.watching.prepare(library_id, query_vector=[0.0, 1.0, 0.0], k=1)
    service.watching.register(unstored)
    listener = service.watching.listen(listened.id)
    first(listener)

    took = eventually(lambda: gone(service, idle.id), 3.0, "the idle watch's expiry")
    assert took >= 0.3  # not before its TTL (less the time since it was registered)
    time.sleep(1.0)  # twice the TTL more: the listened one and the unstored one stay
    assert not gone(service, listened.id)
    assert not gone(service, unstored.id)
    listener.close()  # the idle clock starts now
    closed_at = time.monotonic()
    eventually(lambda: gone(service, listened.id), 3.0, "the expiry once its listener left")
    assert time.monotonic() - closed_at >= 0.45
    assert service.watching.list(library_id) == [unstored]
    with pytest.raises(WatchNotFoundError):
        service.watching.listen(idle.id)


def test_the_idle_time_of_a_stored_watch_counts_across_a_restart(
    tmp_path: Path, open_service: Open, opened: dict[VectorDBService, Container]
) -> None:
    data = str(tmp_path / "data")
    service = open_service(storage="disk", data_dir=data, watch_ttl=2)
    library_id = fill(service)
    watch = register(service, library_id)
    close(opened, service)
    time.sleep(2.1)  # idle for its TTL while no server runs
    again = open_service(storage="disk", data_dir=data, watch_ttl=2)
    took = eventually(lambda: gone(again, watch.id), 1.5, "its expiry after the restart")
    assert took < 1.0  # its idle clock was not restarted with the server
    assert FileWatches(data).load_watches() == []


def test_the_keeper_thread_lives_with_the_service(
    tmp_path: Path, open_service: Open, opened: dict[VectorDBService, Container]
) -> None:
    before = len(keeper_threads())
    service = open_service(storage="disk", data_dir=str(tmp_path / "data"), watch_ttl=1)
    assert len(keeper_threads()) == before + 1
    close(opened, service)
    assert len(keeper_threads()) == before
    with pytest.raises(ValueError, match="watch_ttl"):
        Settings(watch_ttl=0)
    assert Settings.from_env({"ARRWDB_WATCH_TTL": "2.5"}).watch_ttl == 2.5
    assert Settings().watch_ttl == 3600


# -- several servers (PostgreSQL) ---------------------------------------------------------------


@pytest.fixture
def on_postgres(pg_schema: str, open_service: Open) -> Open:
    def open_one(**options: Any) -> VectorDBService:
        return open_service(
            storage="postgres",
            postgres_url=pg.url(),
            postgres_schema=pg_schema,
            **{"postgres_poll_interval": 0.05, **options},
        )

    return open_one


def test_servers_on_postgresql_share_their_stored_watches(on_postgres: Open) -> None:
    a, b = on_postgres(), on_postgres()
    library_id = fill(a)
    eventually(lambda: b.last_event_id == a.last_event_id, 5.0, "b following a")
    watch = register(a, library_id)
    # b starts it on its own round (no lookup asked for it)
    took = eventually(
        lambda: watch.id in [w.id for w in b.watching.list(library_id)], 2.0, "b seeing it"
    )
    assert took <= 2.0
    on_a, on_b = a.watching.listen(watch.id), b.watching.listen(watch.id)
    assert titles(first(on_a)) == titles(first(on_b)) == ["east", "north-east"]
    a.add_document(
        library_id, {"title": "east-2", "chunks": [{"text": "e", "embedding": [1.0, 0.1, 0.0]}]}
    )
    from_a = [first(on_a), first(on_a)]
    from_b = [first(on_b), first(on_b)]
    assert [e.type for e in from_a] == [WATCH_LEFT, WATCH_ENTERED]
    assert [(e.id, e.type, dict(e.data)) for e in from_b] == [
        (e.id, e.type, dict(e.data)) for e in from_a
    ]
    assert [e.id for e in from_a] == [f"{a.last_event_id}.0", f"{a.last_event_id}.1"]

    b.watching.stop(watch.id, library_id)  # DELETE on b ends it on a too
    eventually(lambda: gone(a, watch.id), 2.0, "a dropping the watch b deleted")
    with pytest.raises(SubscriptionClosedError):
        on_a.get(timeout=1)
    assert on_a.closed_reason == CLOSED_DELETED


def test_a_watch_made_on_one_server_is_listenable_on_another_at_once(on_postgres: Open) -> None:
    a, b = on_postgres(), on_postgres()
    library_id = fill(a)
    eventually(lambda: b.last_event_id == a.last_event_id, 5.0, "b following a")
    watch = register(a, library_id)
    assert titles(first(b.watching.listen(watch.id, library_id=library_id))) == [
        "east",
        "north-east",
    ]
    with pytest.raises(WatchNotFoundError):
        b.watching.get("no-such-watch")


def test_a_listener_on_any_server_keeps_a_watch_alive_and_a_restart_keeps_it(
    on_postgres: Open, opened: dict[VectorDBService, Container]
) -> None:
    a, b = on_postgres(watch_ttl=0.5), on_postgres(watch_ttl=0.5)
    library_id = fill(a)
    eventually(lambda: b.last_event_id == a.last_event_id, 5.0, "b following a")
    watch = register(a, library_id)
    listener = b.watching.listen(watch.id)  # on b only: a has no listener of it
    first(listener)
    time.sleep(2.0)  # four TTLs
    assert not gone(a, watch.id)
    assert not gone(b, watch.id)
    close(opened, a)
    c = on_postgres(watch_ttl=0.5)  # a server started meanwhile has it too
    assert not gone(c, watch.id)
    listener.close()
    eventually(lambda: gone(b, watch.id) and gone(c, watch.id), 3.0, "its expiry everywhere")


class CatchesUpOnAMiss(dict[str, Any]):
    """A projection's states whose server applies the log right after one lookup misses: the
    moment its follower's thread may take, between two reads of the keeper."""

    def __init__(self, states: dict[str, Any], catch_up: Callable[[], object]) -> None:
        super().__init__(states)
        self._catch_up: Callable[[], object] | None = catch_up

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        if not found and self._catch_up is not None:
            catch_up, self._catch_up = self._catch_up, None
            catch_up()
        return found


def test_a_server_catching_up_meanwhile_keeps_a_watch_of_a_library_it_just_got(
    on_postgres: Open,
) -> None:
    a = on_postgres()
    # b follows only when it writes (no notifications, a poll a minute): behind a from now on
    b = on_postgres(postgres_notify=False, postgres_poll_interval=60.0)
    library_id = fill(a)
    watch = register(a, library_id)
    assert library_id not in b.projection.states
    # b's keeper looks for the watch's library (not there yet), and right then b applies the
    # log (a write of its own brings it up to date): the library was created, not deleted
    b.projection.states = CatchesUpOnAMiss(
        b.projection.states,
        lambda: b.create_library("elsewhere", dimension=3, index="flat", embedder=None),
    )
    b.watching.keeper.round()
    assert b.projection.applied >= int(a.last_event_id)  # it did catch up meanwhile
    a.watching.keeper.round()
    assert not gone(a, watch.id)  # still stored: a keeps it
    b.watching.keeper.round()  # and b starts it, now that it has the library
    assert [w.id for w in b.watching.list(library_id)] == [watch.id]
