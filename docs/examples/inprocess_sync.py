"""The spec's in-process example, as written (run from any directory: it uses ./data)."""

import numpy as np

import arrwdb

vec = np.random.default_rng(0).random(384, dtype=np.float32)
numpy_vector = vec

db = arrwdb.open("./data")  # durable; arrwdb.open() is in-memory
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
db.delete_library("papers")
db.close()
