"""A check for the type checker only: the in-process databases and the clients of a server
implement the same Protocols (``arrwdb.api``). Nothing here runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from arrwdb.api import AsyncDatabaseAPI, AsyncLibraryAPI, DatabaseAPI, Events, LibraryAPI
    from arrwdb.client import (
        AsyncDatabase,
        AsyncLibraryHandle,
        Database,
        EventStream,
        LibraryHandle,
    )
    from arrwdb.remote import (
        AsyncRemoteDatabase,
        AsyncRemoteLibrary,
        RemoteDatabase,
        RemoteEventStream,
        RemoteLibrary,
    )

    def _sync(db: Database, remote: RemoteDatabase) -> list[DatabaseAPI]:
        return [db, remote]

    def _libraries(lib: LibraryHandle, remote: RemoteLibrary) -> list[LibraryAPI]:
        return [lib, remote]

    def _streams(stream: EventStream, remote: RemoteEventStream) -> list[Events]:
        return [stream, remote]

    def _async(db: AsyncDatabase, remote: AsyncRemoteDatabase) -> list[AsyncDatabaseAPI]:
        return [db, remote]

    def _async_libraries(
        lib: AsyncLibraryHandle, remote: AsyncRemoteLibrary
    ) -> list[AsyncLibraryAPI]:
        return [lib, remote]
