"""Exact sparse dot-product top-k: queries x documents as scipy CSR products, documents in chunks
with a running top-k, so memory stays at (queries x chunk) dense scores. No pruning, no approximation:
every document with a shared term is scored, and a document with none scores 0 (ties broken later by
doc id, as for dense)."""

import numpy as np
import torch

from sie_evals.lib.engines.vectors import SparseVectors
from sie_evals.lib.quality.top_k import merge_top_k

DEFAULT_DOC_CHUNK = 20_000


def sparse_top_k(
    queries: SparseVectors, docs: SparseVectors, k: int, doc_chunk: int = DEFAULT_DOC_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Dot-product scores and document indices of the top `k` docs per query, best first."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query vocabulary {queries.shape[1]} != document vocabulary {docs.shape[1]}")
    k = min(k, len(docs))
    q = queries.matrix.astype(np.float32)
    chunks = (
        (
            start,
            torch.from_numpy(np.asarray((q @ docs.matrix[start : start + doc_chunk].T).toarray(), dtype=np.float32)),
        )
        for start in range(0, len(docs), doc_chunk)
    )
    return merge_top_k(chunks, len(queries), k)
