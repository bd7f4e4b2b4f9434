"""The ``KeyStore`` contract (where API keys are kept), run against every adapter, and the
``KeyRing`` over it: digests only, revocation, keys reopened as they were, keys shared."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pg
from arrwdb.adapters.keys.file import FileKeys
from arrwdb.adapters.keys.memory import MemoryKeys
from arrwdb.domain.access import ADMIN, ANYONE, KeyRing, Need, digest
from arrwdb.domain.errors import ForbiddenError, NotFoundError, UnauthorizedError
from arrwdb.domain.models import ApiKey, new_id, utcnow
from arrwdb.domain.ports import KeyStore

Make = Callable[[], KeyStore]


@pytest.fixture(params=["memory", "file", "postgres"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """Makes the adapter; a second call opens the same keys again (memory: the same one)."""
    if request.param == "memory":
        store = MemoryKeys()
        yield lambda: store
    elif request.param == "file":
        yield lambda: FileKeys(tmp_path)
    else:
        pg.require()
        from arrwdb.adapters.keys.postgres import PostgresKeys

        schema = pg.new_schema()
        opened: list[PostgresKeys] = []

        def open_keys() -> KeyStore:
            opened.append(PostgresKeys(pg.url(), schema))
            return opened[-1]

        yield open_keys
        for keys in opened:
            keys.close()
        pg.drop(schema)


def key(name: str = "k", libraries: tuple[str, ...] = ("*",)) -> ApiKey:
    return ApiKey(new_id(), name, libraries, "read", utcnow(), digest(new_id()))


def test_saved_keys_are_loaded_again_and_revoked_ones_are_not(make: Make) -> None:
    store = make()
    assert store.load_keys() == []
    a, b = key("a", ("lib-1", "lib-2")), key("b")
    store.save_key(a)
    store.save_key(b)
    again = make()
    assert sorted(again.load_keys(), key=lambda k: k.name) == [a, b]
    assert again.revoke_key(a.id) is True
    assert again.revoke_key(a.id) is False
    assert store.load_keys() == [b]


def test_a_ring_checks_secrets_and_closes_what_a_revocation_names(make: Make) -> None:
    ring = KeyRing(make(), admin_key="the-admin-key")
    ring.load()
    assert ring.authenticate("the-admin-key") is ADMIN
    with pytest.raises(UnauthorizedError):
        ring.authenticate(None)
    with pytest.raises(UnauthorizedError):
        ring.authenticate("guess")
    made, secret = ring.create("reader", ["lib-1"], "read", exists=lambda _: True)
    assert secret not in repr(made)
    assert made.digest == digest(secret)
    caller = ring.authenticate(secret)
    assert caller.allows(Need.READ, "lib-1")
    assert not caller.allows(Need.READ, "lib-2")
    assert not caller.allows(Need.WRITE, "lib-1")
    with pytest.raises(ForbiddenError):
        caller.require(Need.MANAGE)
    other = KeyRing(make(), admin_key="the-admin-key")  # another server on the same keys
    other.load()
    assert other.authenticate(secret).key_id == made.id
    revoked: list[str] = []
    other.on_revoke(revoked.append)
    ring.revoke(made.id)
    with pytest.raises(UnauthorizedError):
        ring.authenticate(secret)
    other.refresh()  # what a server sharing the store does every half second
    assert revoked == [made.id]
    with pytest.raises(NotFoundError):
        ring.revoke(made.id)


def test_a_ring_without_an_admin_key_lets_everyone_in(make: Make) -> None:
    ring = KeyRing(make())
    assert not ring.enabled
    assert ring.authenticate(None) is ANYONE
    assert ANYONE.allows(Need.ADMIN)
