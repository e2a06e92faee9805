"""Exact sparse dot-product top-k: queries x documents as scipy CSR products, documents in chunks
with a running top-k, so memory stays at (queries x chunk) dense scores. No pruning, no approximation:
every document with a shared term is scored, and a document with none scores 0 (ties broken later by
doc id, as for dense)."""

import numpy as np
import torch

from sie_evals.lib.engines.outputs import SparseVectors

DEFAULT_DOC_CHUNK = 20_000


def sparse_top_k(
    queries: SparseVectors, docs: SparseVectors, k: int, doc_chunk: int = DEFAULT_DOC_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Dot-product scores and document indices of the top `k` docs per query, best first."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query vocabulary {queries.shape[1]} != document vocabulary {docs.shape[1]}")
    k = min(k, len(docs))
    q = queries.matrix.astype(np.float32)
    best_scores = torch.empty((len(queries), 0), dtype=torch.float32)
    best_idx = torch.empty((len(queries), 0), dtype=torch.long)
    for start in range(0, len(docs), doc_chunk):
        d = docs.matrix[start : start + doc_chunk]
        scores = torch.from_numpy(np.asarray((q @ d.T).toarray(), dtype=np.float32))
        s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        best_scores = torch.cat([best_scores, s], dim=1)
        best_idx = torch.cat([best_idx, i + start], dim=1)
        if best_scores.shape[1] > k:
            best_scores, pos = torch.topk(best_scores, k, dim=1)
            best_idx = torch.gather(best_idx, 1, pos)
    return best_scores.numpy(), best_idx.numpy()
