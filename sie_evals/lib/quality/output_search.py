"""Exact top-k for every output type: cosine for dense (search.py, as MTEB), sparse dot product
(sparse_search.py), MaxSim for multivector (maxsim.py), and MUVERA as in the paper: plain dot product
over the FDEs (their dot product is what approximates MaxSim; normalising documents would change the
ranking) for candidates, the top `rescore_k` of them rescored with exact MaxSim.

Every result row is best first, ties by document index ascending."""

import numpy as np

from sie_evals.lib.engines.vectors import MultiVectors, MuveraVectors, SparseVectors
from sie_evals.lib.quality.maxsim import maxsim_rescore, maxsim_top_k
from sie_evals.lib.quality.search import exact_top_k, inner_product_top_k
from sie_evals.lib.quality.sparse_search import sparse_top_k
from sie_evals.lib.quality.top_k import sort_rows

DEFAULT_DOC_CHUNK = 20_000  # FDEs are wide (10,240 dims): 800 MiB of documents per chunk


def dot_top_k(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised dot-product top-k over dense vectors (documents in chunks, as for dense)."""
    return inner_product_top_k(queries, docs, k, DEFAULT_DOC_CHUNK)


def rescore(
    queries: MuveraVectors, docs: MuveraVectors, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top `k` of each query's candidates by exact MaxSim, best first (ties: document index)."""
    scores, indices = sort_rows(maxsim_rescore(queries.tokens, docs.tokens, candidates), candidates)
    return scores[:, :k], indices[:, :k]


def muvera_top_k(queries: MuveraVectors, docs: MuveraVectors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """MUVERA's pipeline: the FDE dot-product top `rescore_k` candidates, rescored by exact MaxSim. At most
    `rescore_k` documents per query are ranked (cutoffs above it see only those)."""
    _, candidates = dot_top_k(queries.fde, docs.fde, queries.rescore_k)
    return rescore(queries, docs, candidates, k)


def top_k(queries, docs, k: int, similarity: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Scores and indices of the top `k` documents per query for whatever the engine produced."""
    if isinstance(queries, MuveraVectors) and isinstance(docs, MuveraVectors):
        return muvera_top_k(queries, docs, k)
    if isinstance(queries, SparseVectors) and isinstance(docs, SparseVectors):
        return sparse_top_k(queries, docs, k)
    if isinstance(queries, MultiVectors) and isinstance(docs, MultiVectors):
        return maxsim_top_k(queries, docs, k)
    if isinstance(queries, SparseVectors | MultiVectors | MuveraVectors) or isinstance(
        docs, SparseVectors | MultiVectors | MuveraVectors
    ):
        raise ValueError(f"queries ({type(queries).__name__}) and documents ({type(docs).__name__}) differ in type")
    if similarity == "dot":
        return dot_top_k(queries, docs, k)
    return exact_top_k(queries, docs, k)
