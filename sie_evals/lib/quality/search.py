"""Exact cosine top-k retrieval with chunked matrix products (no approximate index).

Like MTEB: cosine similarity in float32 and the top k (1000) documents per query. Documents are
scored in chunks and merged with a running top-k, so memory stays at (queries x chunk).
"""

import numpy as np
import torch

DEFAULT_DOC_CHUNK = 50_000


def _unit(x: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if not arr.flags.writeable:  # a read-only memory map (embedding cache): torch wants writable memory
        arr = arr.copy()  # one chunk, which normalize() would allocate anyway
    t = torch.from_numpy(arr)
    return torch.nn.functional.normalize(t, p=2, dim=1)


def exact_top_k(
    queries: np.ndarray, docs: np.ndarray, k: int, doc_chunk: int = DEFAULT_DOC_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores and document indices of the top `k` docs per query, best first.

    Returns (scores, indices), each (n_queries, min(k, n_docs))."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query dims {queries.shape[1]} != document dims {docs.shape[1]}")
    k = min(k, docs.shape[0])
    q = _unit(queries)
    with torch.inference_mode():
        chunks = ((start, q @ _unit(docs[start : start + doc_chunk]).T) for start in range(0, docs.shape[0], doc_chunk))
        return merge_top_k(chunks, q.shape[0], k)


def merge_top_k(chunks, n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The running top-k of every exact search here (dense, sparse, MaxSim, MUVERA): `chunks` yields
    (first document index, scores (n_queries x chunk docs)); memory stays at (queries x (k + chunk))."""
    best_scores = torch.empty((n_queries, 0), dtype=torch.float32)
    best_idx = torch.empty((n_queries, 0), dtype=torch.long)
    for start, scores in chunks:
        s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        best_scores = torch.cat([best_scores, s], dim=1)
        best_idx = torch.cat([best_idx, i + start], dim=1)
        if best_scores.shape[1] > k:
            best_scores, pos = torch.topk(best_scores, k, dim=1)
            best_idx = torch.gather(best_idx, 1, pos)
    return best_scores.numpy(), best_idx.numpy()


def to_run(
    query_ids: list[str], doc_ids: list[str], scores: np.ndarray, indices: np.ndarray
) -> dict[str, dict[str, float]]:
    """The TREC-style run pytrec_eval takes: {query_id: {doc_id: score}}."""
    return {
        qid: {doc_ids[j]: float(s) for s, j in zip(scores[row], indices[row], strict=True)}
        for row, qid in enumerate(query_ids)
    }
