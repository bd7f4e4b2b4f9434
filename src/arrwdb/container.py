"""The composition root: the only module that knows every concrete adapter.

One ``Selector`` per port picks its adapter from configuration; everything that opens and
closes is a ``Resource`` that owns that lifecycle: the store (``start``: recovery; ``stop``),
the event hub (started after the store's head, reading the store's log behind its memory when
the store keeps one; stopped), and the service (loads the projection and starts the stored
watches again, follows them and expires idle ones; saves indexes at the end, and closes the
watch store). ``init_resources()`` opens them in that order, ``shutdown_resources()`` closes them in
the reverse one. Nothing is built when this module is imported: ``build_container(settings)``
wires, ``init_resources()`` opens.

Tests override any provider (``container.store.override(fake)``) before initialising.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dependency_injector import containers, providers

from arrwdb.adapters.compute.blas import SerialBlas
from arrwdb.adapters.embedders.registry import EmbedderLike, build_registry
from arrwdb.adapters.hub.local import LocalEventHub
from arrwdb.adapters.index import make_index
from arrwdb.adapters.keys.file import FileKeys
from arrwdb.adapters.keys.memory import MemoryKeys
from arrwdb.adapters.storage.disk import DiskStore
from arrwdb.adapters.storage.index_files import FileIndexStore
from arrwdb.adapters.storage.memory import InMemoryStore
from arrwdb.adapters.watches.file import FileWatches
from arrwdb.adapters.watches.memory import MemoryWatches
from arrwdb.config import Settings
from arrwdb.domain.access import KeyRing
from arrwdb.domain.chunking import Chunker
from arrwdb.domain.errors import StorageError
from arrwdb.domain.limits import Limits
from arrwdb.domain.ports import (
    Embedder,
    EventHistory,
    EventHub,
    IndexFactory,
    IndexStore,
    KeyStore,
    SerialCompute,
    Store,
    WatchStore,
)
from arrwdb.domain.service import VectorDBService


def _opened_store(store: Store) -> Iterator[Store]:
    store.start()
    try:
        yield store
    finally:
        store.stop()


def _started_hub(hub: EventHub, store: Store) -> Iterator[EventHub]:
    hub.start(store.head, store if isinstance(store, EventHistory) else None)
    try:
        yield hub
    finally:
        hub.stop()


def _service(
    store: Store,
    hub: EventHub,
    index_factory: IndexFactory,
    embedders: dict[str, Embedder],
    chunker: Chunker,
    default_embedder: str,
    index_store: IndexStore | None,
    index_save_interval: float,
    limits: Limits,
    watch_store: WatchStore,
    watch_ttl: float,
    serial: SerialCompute,
) -> Iterator[VectorDBService]:
    service = VectorDBService(
        store,
        hub,
        index_factory,
        embedders,
        chunker,
        default_embedder=default_embedder,
        index_store=index_store,
        limits=limits,
        watch_store=watch_store,
        watch_ttl=watch_ttl,
        serial=serial,
    )
    try:
        try:
            service.load()
            service.follow()
            service.watching.keep()
            service.autosave_indexes(index_save_interval)
        except BaseException:
            service.close()
            raise
        try:
            yield service
        finally:
            service.close()
    finally:
        close = getattr(watch_store, "close", None)
        if close is not None:
            close()


def _indexes_dir(data_dir: str) -> Path:
    return Path(data_dir) / "indexes"


def _optional_index_store(data_dir: str | None) -> IndexStore | None:
    """Saved indexes beside a shared store, when the server has a data directory of its own."""
    return None if not data_dir else FileIndexStore(_indexes_dir(data_dir))


def _postgres_store(**options: Any) -> Store:
    """The PostgreSQL store (imported here: it needs the ``postgres`` extra)."""
    try:
        from arrwdb.adapters.storage.postgres import PostgresStore
    except ImportError as exc:
        raise StorageError(str(exc)) from None
    return PostgresStore(**options)


def _postgres_keys(url: str, schema: str) -> KeyStore:
    """The API keys of a PostgreSQL store (imported here: it needs the ``postgres`` extra)."""
    try:
        from arrwdb.adapters.keys.postgres import PostgresKeys
    except ImportError:
        raise StorageError(
            "PostgreSQL storage needs the postgres extra: pip install 'arrwdb[postgres]'"
        ) from None

    return PostgresKeys(url, schema)


def _postgres_watches(url: str, schema: str) -> WatchStore:
    """The stored watches of a PostgreSQL store (imported here: it needs the ``postgres``
    extra)."""
    try:
        from arrwdb.adapters.watches.postgres import PostgresWatches
    except ImportError:
        raise StorageError(
            "PostgreSQL storage needs the postgres extra: pip install 'arrwdb[postgres]'"
        ) from None

    return PostgresWatches(url, schema)


def _loaded_keyring(store: KeyStore, admin_key: str | None, _: Store) -> Iterator[KeyRing]:
    """The key ring, loaded after the store is open (its keys live beside the store)."""
    ring = KeyRing(store, admin_key)
    ring.load()
    try:
        yield ring
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


class Container(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)

    store = providers.Selector(
        config.storage,
        memory=providers.Singleton(InMemoryStore, history_size=config.history_size),
        disk=providers.Singleton(
            DiskStore,
            config.data_dir,
            fsync=config.fsync,
            history_size=config.history_size,
            history_max_age=config.history_max_age,
        ),
        postgres=providers.Singleton(
            _postgres_store,
            url=config.postgres_url,
            schema=config.postgres_schema,
            history_size=config.history_size,
            history_max_age=config.history_max_age,
            notify=config.postgres_notify,
            poll_interval=config.postgres_poll_interval,
            lock_timeout=config.postgres_lock_timeout,
            max_lag=config.max_lag,
        ),
    )
    opened_store = providers.Resource(_opened_store, store)

    hub = providers.Selector(
        config.bus,
        inprocess=providers.Singleton(
            LocalEventHub,
            history_size=config.history_size,
            history_max_age=config.history_max_age,
            default_buffer=config.subscriber_buffer,
        ),
    )
    started_hub = providers.Resource(_started_hub, hub, opened_store)

    # saved indexes live beside the durable store; an in-memory store rebuilds nothing
    index_store = providers.Selector(
        config.storage,
        memory=providers.Object(None),
        disk=providers.Singleton(FileIndexStore, providers.Callable(_indexes_dir, config.data_dir)),
        postgres=providers.Singleton(_optional_index_store, config.data_dir),
    )

    index_factory = providers.Object(make_index)

    # the embedders by name: built-ins, the arrwdb.embedders entry points, and the caller's
    # own (``build_container(embedders=...)``); ``minilm`` and entry points are made on first use
    user_embedders: providers.Object[Mapping[str, EmbedderLike] | None] = providers.Object(None)
    embedders = providers.Singleton(build_registry, config.default_embedder, user_embedders)

    chunker = providers.Singleton(Chunker, size=config.chunk_size, overlap=config.chunk_overlap)

    # API keys live beside the store: in memory, in the data directory, in PostgreSQL
    key_store = providers.Selector(
        config.storage,
        memory=providers.Singleton(MemoryKeys),
        disk=providers.Singleton(FileKeys, config.data_dir),
        postgres=providers.Singleton(
            _postgres_keys, url=config.postgres_url, schema=config.postgres_schema
        ),
    )
    keyring = providers.Resource(_loaded_keyring, key_store, config.api_key, opened_store)

    # REST watches live beside the store too (and are shared on PostgreSQL)
    watch_store = providers.Selector(
        config.storage,
        memory=providers.Singleton(MemoryWatches),
        disk=providers.Singleton(FileWatches, config.data_dir),
        postgres=providers.Singleton(
            _postgres_watches, url=config.postgres_url, schema=config.postgres_schema
        ),
    )

    service = providers.Resource(
        _service,
        store=opened_store,
        hub=started_hub,
        index_factory=index_factory,
        embedders=embedders,
        chunker=chunker,
        default_embedder=config.default_embedder,
        index_store=index_store,
        index_save_interval=config.index_save_interval,
        watch_store=watch_store,
        watch_ttl=config.watch_ttl,
        serial=providers.Singleton(SerialBlas),
        limits=providers.Factory(
            Limits,
            metadata_bytes=config.max_metadata_bytes,
            text_bytes=config.max_text_bytes,
            dimension=config.max_dimension,
            libraries=config.max_libraries,
            watches_per_library=config.max_watches_per_library,
        ),
    )


def build_container(
    settings: Settings | None = None, *, embedders: Mapping[str, EmbedderLike] | None = None
) -> Container:
    """A wired container for ``settings`` (default: from ``ARRWDB_*`` environment), with the
    caller's own ``embedders`` (name -> ``fn(list[str]) -> array`` or ``Embedder``) besides
    the built-in and entry-point ones."""
    settings = settings or Settings.from_env()
    container = Container()
    container.config.from_dict(asdict(settings))
    if embedders is not None:
        container.user_embedders.override(providers.Object(embedders))
    return container
