"""Exact top-k for every output type: cosine for dense (search.py, as MTEB), sparse dot product
(sparse_search.py), MaxSim for multivector (maxsim.py), and plain dot product for MUVERA FDEs (their
dot product is what approximates MaxSim; normalising documents would change the ranking)."""

import numpy as np
import torch

from sie_evals.lib.engines.outputs import MultiVectors, SparseVectors
from sie_evals.lib.quality.maxsim import maxsim_top_k
from sie_evals.lib.quality.search import exact_top_k, merge_top_k
from sie_evals.lib.quality.sparse_search import sparse_top_k

DEFAULT_DOC_CHUNK = 20_000


def dot_top_k(
    queries: np.ndarray, docs: np.ndarray, k: int, doc_chunk: int = DEFAULT_DOC_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised dot-product top-k over dense vectors, documents in chunks with a running top-k."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query dims {queries.shape[1]} != document dims {docs.shape[1]}")
    k = min(k, docs.shape[0])
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    with torch.inference_mode():
        chunks = (
            (start, q @ torch.from_numpy(np.ascontiguousarray(docs[start : start + doc_chunk], dtype=np.float32)).T)
            for start in range(0, docs.shape[0], doc_chunk)
        )
        return merge_top_k(chunks, q.shape[0], k)


def top_k(queries, docs, k: int, similarity: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Scores and indices of the top `k` documents per query for whatever the engine produced."""
    if isinstance(queries, SparseVectors) and isinstance(docs, SparseVectors):
        return sparse_top_k(queries, docs, k)
    if isinstance(queries, MultiVectors) and isinstance(docs, MultiVectors):
        return maxsim_top_k(queries, docs, k)
    if isinstance(queries, SparseVectors | MultiVectors) or isinstance(docs, SparseVectors | MultiVectors):
        raise ValueError(f"queries ({type(queries).__name__}) and documents ({type(docs).__name__}) differ in type")
    if similarity == "dot":
        return dot_top_k(queries, docs, k)
    return exact_top_k(queries, docs, k)
