"""A check for the type checker only: the in-process databases and the clients of a server
implement the same Protocols (``arrwdb.api``). Nothing here runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arrwdb.api import (
        AsyncDatabaseAPI,
        AsyncLibraryAPI,
        AsyncWatchAPI,
        AsyncWatchStream,
        DatabaseAPI,
        Events,
        LibraryAPI,
        WatchAPI,
        WatchStream,
    )
    from arrwdb.client import (
        AsyncDatabase,
        AsyncLibraryHandle,
        Database,
        EventStream,
        LibraryHandle,
    )
    from arrwdb.live import AsyncWatchHandle, WatchEvents, WatchHandle
    from arrwdb.remote import (
        AsyncRemoteDatabase,
        AsyncRemoteLibrary,
        AsyncRemoteWatch,
        AsyncRemoteWatchEvents,
        RemoteDatabase,
        RemoteEventStream,
        RemoteLibrary,
        RemoteWatch,
        RemoteWatchEvents,
    )

    def _sync(db: Database, remote: RemoteDatabase) -> list[DatabaseAPI]:
        return [db, remote]

    def _libraries(lib: LibraryHandle, remote: RemoteLibrary) -> list[LibraryAPI]:
        return [lib, remote]

    def _streams(stream: EventStream, remote: RemoteEventStream) -> list[Events]:
        return [stream, remote]

    def _watches(watch: WatchHandle, remote: RemoteWatch) -> list[WatchAPI]:
        return [watch, remote]

    def _watch_streams(events: WatchEvents, remote: RemoteWatchEvents) -> list[WatchStream]:
        return [events, remote]

    def _async(db: AsyncDatabase, remote: AsyncRemoteDatabase) -> list[AsyncDatabaseAPI]:
        return [db, remote]

    def _async_libraries(
        lib: AsyncLibraryHandle, remote: AsyncRemoteLibrary
    ) -> list[AsyncLibraryAPI]:
        return [lib, remote]

    def _async_watches(watch: AsyncWatchHandle, remote: AsyncRemoteWatch) -> list[AsyncWatchAPI]:
        return [watch, remote]

    def _async_watch_streams(
        events: WatchEvents, remote: AsyncRemoteWatchEvents
    ) -> list[AsyncWatchStream]:
        return [events, remote]
