"""Live queries (docs/watches.md): a top-k watch and a match watch, followed as documents are
added and deleted; the same function in process and against a server (``arrwdb.connect``),
then the async API. This script starts a server in the background for the demo; against your
own, use ``arrwdb.connect("http://127.0.0.1:8000")``."""

import anyio

import arrwdb
from arrwdb.api import AsyncDatabaseAPI, DatabaseAPI, LibraryAPI
from arrwdb.server import BackgroundServer

PLACES = {
    "north": [0.0, 1.0, 0.0],
    "north-east": [0.7, 0.7, 0.0],
    "east": [1.0, 0.0, 0.0],
    "up": [0.0, 0.0, 1.0],
}


def add(lib: LibraryAPI, name: str, vector: list[float]) -> None:
    lib.add_document(id=name, title=name, chunks=[{"text": name, "embedding": vector}])


def describe(event: arrwdb.WatchEvent) -> str:
    data = event.data
    if event.type == "watch.left":
        return f"{event.id} left {data['document_id']} rank {data['rank']} ({data['reason']})"
    if event.type == "watch.entered":
        return f"{event.id} entered {data['document_id']} rank {data['rank']}"
    if event.type == "watch.match":
        return f"{event.id} match {data['document_id']} score {data['score']:.3f}"
    return f"{event.id} {event.type} {dict(data)}"


def follow(db: DatabaseAPI) -> list[str]:
    """Watch a library change; what happened, line by line."""
    lines = []
    lib = db.create_library("places", dimension=3, index="flat", embedder=None)
    for name, vector in PLACES.items():
        add(lib, name, vector)
    # a top-k watch: the 2 chunks nearest to "east, a little north", kept up to date
    with (
        lib.watch([1.0, 0.2, 0.0], k=2) as top,
        lib.watch([0.0, 0.0, 1.0], k=None, threshold=0.9) as sky,  # a match watch
    ):
        events = top.events(timeout=5.0)
        matches = sky.events(timeout=5.0)
        ready = next(events)  # always first: the results now
        names = [hit["document_id"] for hit in ready.data["results"]]
        lines.append(f"ready {names} at change {ready.data['event_id']}")
        assert next(matches).data["results"] == []  # a match watch starts empty

        add(lib, "east-2", [1.0, 0.1, 0.0])  # nearer than north-east: it takes its place
        left, entered = next(events), next(events)
        lines += [describe(left), describe(entered)]
        lines.append(f"both caused by change {entered.data['event_id']}")
        add(lib, "sky", [0.1, 0.0, 1.0])  # far from the top-k query, near the match watch's
        lines.append(describe(next(matches)))
        lib.delete_document("east")  # it leaves; the next best comes back
        lines += [describe(next(events)), describe(next(events))]

        # resume from an event id (after a restart of your program, say): the events after it
        again = top.events(since=ready.id, timeout=5.0)
        lines.append(f"resumed after {ready.id}: {[next(again).id for _ in range(4)]}")
        again.close()
    lines.append(f"closed: {next(events).data['reason']}")  # leaving the with removed it
    db.delete_library("places")
    db.close()
    return lines


async def follow_async(db: AsyncDatabaseAPI) -> list[str]:
    lib = await db.create_library("places", dimension=3, index="flat", embedder=None)
    async with await lib.watch([1.0, 0.0, 0.0], k=1) as w:
        events = w.events(timeout=5.0)
        await lib.add_document(id="east", chunks=[{"text": "east", "embedding": [1.0, 0.0, 0.0]}])
        seen = []
        async for event in events:
            seen.append(event.type)
            if event.type == "watch.entered":
                break
    await db.close()
    return seen


in_process = follow(arrwdb.open())
for line in in_process:
    print(line)
with BackgroundServer(arrwdb.Settings(storage="memory"), log_level="warning") as server:
    over_http = follow(arrwdb.connect(server.url))
    assert over_http == in_process, over_http
    print("the client saw the same events")
    assert anyio.run(follow_async, arrwdb.open_async()) == ["watch.ready", "watch.entered"]
    seen = anyio.run(follow_async, arrwdb.connect_async(server.url))
    print("async:", " ".join(seen))

assert in_process == [
    "ready ['east', 'north-east'] at change 5",
    "6.0 left north-east rank 1 (outranked)",
    "6.1 entered east-2 rank 0",
    "both caused by change 6",
    "7.0 match sky score 0.995",
    "8.0 left east rank 1 (deleted)",
    "8.1 entered north-east rank 1",
    "resumed after 5: ['6.0', '6.1', '8.0', '8.1']",
    "closed: watch_deleted",
]
