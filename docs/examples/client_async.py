"""The async client: ``arrwdb.connect_async(url)`` has the API of ``arrwdb.open_async()``."""

import asyncio

import arrwdb
from arrwdb.server import BackgroundServer


async def main(url: str) -> None:
    async with arrwdb.connect_async(url) as db:
        lib = await db.create_library("notes")
        events = lib.events()  # live: every change from now on
        doc = await lib.add_document(title="Attention", text="Attention is all you need.")
        hits = await lib.search("attention", k=3)
        print(hits[0].document_title, round(hits[0].score, 3))
        await lib.delete_document(doc.id)
        async for event in events:
            print(event.id, event.type, event.library_id, dict(event.data))
            if event.type == "document.deleted":
                break
        events.close()
        await db.delete_library("notes")


with BackgroundServer(arrwdb.Settings(storage="memory"), log_level="warning") as server:
    asyncio.run(main(server.url))
