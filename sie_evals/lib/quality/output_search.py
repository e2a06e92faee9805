"""Exact top-k for every output type: cosine for dense (search.py, as MTEB), sparse dot product
(sparse_search.py), MaxSim for multivector (maxsim.py), and plain dot product for MUVERA FDEs (their
dot product is what approximates MaxSim; normalising documents would change the ranking)."""

import numpy as np

from sie_evals.lib.engines.outputs import MultiVectors, SparseVectors
from sie_evals.lib.quality.maxsim import maxsim_top_k
from sie_evals.lib.quality.search import exact_top_k, inner_product_top_k
from sie_evals.lib.quality.sparse_search import sparse_top_k


def dot_top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised dot-product top-k over dense vectors (faiss's exact flat search, as for dense)."""
    return inner_product_top_k(queries, docs, k)


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
