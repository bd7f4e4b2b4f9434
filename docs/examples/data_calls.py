"""The data calls (upsert, get by ids, query, count, delete, merge-patched metadata, search
grouped by document), in process; the same calls over REST are in docs/protocol.md."""

import arrwdb

db = arrwdb.open()  # in memory
lib = db.get_or_create_library("notes", dimension=3, index="flat")

lib.upsert_document(id="n1", title="one", text="Vector search", metadata={"tag": "db", "n": 1})
lib.upsert_documents(
    [
        {"id": "n2", "chunks": [{"text": "a", "embedding": [1, 0, 0]}], "metadata": {"n": 2}},
        {"id": "n3", "chunks": [{"text": "b", "embedding": [0, 1, 0]}], "metadata": {"n": 3}},
    ]
)
lib.upsert_document(id="n1", title="one, again", text="Replaced")  # the same id: replaced

page = lib.get_documents(ids=["n3", "unknown", "n1"])  # in the order asked, unknown left out
print([d.id for d in page.documents], page.next_cursor)  # ['n3', 'n1'] None

page = lib.query_documents(filter={"n": {"$gte": 2}}, limit=1)  # on document metadata
while True:
    print([d.id for d in page.documents])
    if page.next_cursor is None:
        break
    page = lib.query_documents(filter={"n": {"$gte": 2}}, limit=1, cursor=page.next_cursor)

print(lib.count(), lib.count(filter={"n": 3}))  # 3 1

lib.update_document("n2", metadata={"n": None, "seen": True})  # merge patch: None removes
print(lib.get_documents(ids=["n2"]).documents[0].metadata)  # {'seen': True}

hits = lib.search([1, 0, 0], k=2, group_by="document", include=["metadata"])
print([(h.document_id, h.metadata) for h in hits])  # the best chunk of each document

print(lib.delete_documents(filter={"n": 3}), lib.delete_documents(ids=["n1", "unknown"]))  # 1 1
for event in lib.events(since="earliest", timeout=0.2):
    print(event.id, event.type, event.data.get("document_id"))
db.close()
