"""The async twin of the spec's in-process example."""

import anyio
import numpy as np

import arrwdb


async def main() -> None:
    vec = np.random.default_rng(0).random(384, dtype=np.float32)
    db = arrwdb.open_async("./data")
    lib = await db.create_library("papers", index="hnsw", metric="cosine")
    doc = await lib.add_document(
        title="Attention", text="Attention is all you need.", metadata={"year": 2017}
    )
    await lib.add_documents([{"title": "a", "chunks": [{"text": "x", "embedding": vec}]}])
    hits = await lib.search("transformers", k=5, filter={"year": {"$gte": 2015}})
    hits = await lib.search(vec, k=5)
    print(hits[0].document_id, hits[0].chunk_id, hits[0].score, hits[0].text, hits[0].metadata)
    await lib.get_document(doc.id)
    await lib.delete_document(doc.id)
    await db.get_library("papers")
    await db.list_libraries()
    async for event in lib.events(since="earliest", timeout=1.0):
        print(event.id, event.type, event.library_id, dict(event.data))
    await db.delete_library("papers")
    await db.close()


anyio.run(main)
