"""The in-process example, unchanged but for the first line, against a server:
``arrwdb.connect(url)`` gives the same API. (This script starts a server in the background
for the demo; against your own, use ``arrwdb.connect("http://127.0.0.1:8000")``.)"""

import numpy as np

import arrwdb
from arrwdb.server import BackgroundServer

vec = np.random.default_rng(0).random(384, dtype=np.float32)
numpy_vector = vec

with BackgroundServer(arrwdb.Settings(storage="memory"), log_level="warning") as server:
    db = arrwdb.connect(server.url)  # was: db = arrwdb.open("./data")
    lib = db.create_library("papers", index="hnsw", metric="cosine")
    doc = lib.add_document(
        title="Attention",
        text="Transformers replace recurrence with attention. Attention is all you need.",
        metadata={"year": 2017},
    )
    # vec: a list or a numpy array
    docs = lib.add_documents([{"title": "a", "chunks": [{"text": "x", "embedding": vec}]}])
    hits = lib.search("transformers", k=5, filter={"year": {"$gte": 2015}})
    hits = lib.search(numpy_vector, k=5)  # a query vector instead of text
    print(hits[0].document_id, hits[0].chunk_id, hits[0].score, hits[0].text, hits[0].metadata)
    lib.get_document(doc.id)
    lib.delete_document(doc.id)
    db.get_library("papers")
    db.list_libraries()
    for event in lib.events(since="earliest", timeout=1.0):  # replay what is retained, then live;
        # stops after 1 s without an event
        print(event.id, event.type, event.library_id, dict(event.data))
    try:
        lib.get_document(doc.id)
    except arrwdb.DocumentNotFoundError as exc:  # the same exceptions as in process
        print("not found:", exc.code)
    # bulk ingest: one answer per document, as the server gives it
    ingest = lib.ingest({"title": f"n{i}", "text": f"note number {i}"} for i in range(100))
    print(sum(result.success for result in ingest), "added;", ingest.summary)
    db.delete_library("papers")
    db.close()
