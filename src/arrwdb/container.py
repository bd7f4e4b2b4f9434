"""The composition root: the only module that knows every concrete adapter.

One ``Selector`` per port picks its adapter from configuration; the service is a ``Resource``
(loaded on ``init_resources()``, closed on ``shutdown_resources()``). Nothing is built when this
module is imported: ``build_container(settings)`` wires, ``init_resources()`` opens.

Tests override any provider (``container.repository.override(fake)``) before initialising.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from dependency_injector import containers, providers

from arrwdb.adapters.bus.inprocess import InProcessEventBus
from arrwdb.adapters.embedders.hashing import HashingEmbedder
from arrwdb.adapters.index import make_index
from arrwdb.adapters.storage.disk import DiskRepository
from arrwdb.adapters.storage.index_files import FileIndexStore
from arrwdb.adapters.storage.memory import InMemoryRepository
from arrwdb.config import Settings
from arrwdb.domain.chunking import Chunker
from arrwdb.domain.ports import Embedder, EventBus, IndexFactory, IndexStore, Repository
from arrwdb.domain.service import VectorDBService


def _service(
    repository: Repository,
    bus: EventBus,
    index_factory: IndexFactory,
    embedders: dict[str, Embedder],
    chunker: Chunker,
    default_embedder: str,
    history_size: int,
    index_store: IndexStore | None,
    index_save_interval: float,
) -> Iterator[VectorDBService]:
    service = VectorDBService(
        repository,
        bus,
        index_factory,
        embedders,
        chunker,
        default_embedder=default_embedder,
        history_size=history_size,
        index_store=index_store,
    )
    try:
        service.load()
        service.autosave_indexes(index_save_interval)
    except BaseException:
        service.close()
        raise
    try:
        yield service
    finally:
        service.close()


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def _indexes_dir(data_dir: str) -> Path:
    return Path(data_dir) / "indexes"


class Container(containers.DeclarativeContainer):
    config = providers.Configuration(strict=True)

    repository = providers.Selector(
        config.storage,
        memory=providers.Singleton(InMemoryRepository),
        disk=providers.Singleton(
            DiskRepository,
            config.data_dir,
            fsync=config.fsync,
            event_retention=config.history_size,
            event_max_age=providers.Callable(_seconds, config.history_max_age),
        ),
    )

    bus = providers.Selector(
        config.bus,
        inprocess=providers.Singleton(
            InProcessEventBus,
            history_size=config.history_size,
            history_max_age=config.history_max_age,
            default_buffer=config.subscriber_buffer,
        ),
    )

    # saved indexes live beside the durable store; an in-memory store rebuilds nothing
    index_store = providers.Selector(
        config.storage,
        memory=providers.Object(None),
        disk=providers.Singleton(FileIndexStore, providers.Callable(_indexes_dir, config.data_dir)),
    )

    index_factory = providers.Object(make_index)

    embedders = providers.Dict(hashing=providers.Singleton(HashingEmbedder))

    chunker = providers.Singleton(Chunker, size=config.chunk_size, overlap=config.chunk_overlap)

    service = providers.Resource(
        _service,
        repository=repository,
        bus=bus,
        index_factory=index_factory,
        embedders=embedders,
        chunker=chunker,
        default_embedder=config.embedder,
        history_size=config.history_size,
        index_store=index_store,
        index_save_interval=config.index_save_interval,
    )


def build_container(settings: Settings | None = None) -> Container:
    """A wired container for ``settings`` (default: from ``ARRWDB_*`` environment)."""
    settings = settings or Settings.from_env()
    container = Container()
    container.config.from_dict(asdict(settings))
    return container
