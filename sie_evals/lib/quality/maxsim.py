"""Exact late-interaction (MaxSim) top-k: score(q, d) = sum over query tokens of the best dot product
with any document token, for every query and document (no candidate generation, no PLAID index).

All query tokens are stacked once; documents are taken in chunks of whole documents whose token count
keeps the (query tokens x document tokens) similarity block under `max_block` elements, then reduced:
max over each document's tokens, sum over each query's tokens, and merged into a running top-k. Memory
is bounded by `max_block` whatever the corpus size."""

import numpy as np
import torch

from sie_evals.lib.engines.vectors import MultiVectors
from sie_evals.lib.quality.top_k import merge_top_k

DEFAULT_MAX_BLOCK = 32 * 1024 * 1024  # float32 elements of one similarity block (128 MiB)


def _segment_ids(lengths: np.ndarray) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.from_numpy(lengths.astype(np.int64)))


def maxsim_scores(queries: MultiVectors, docs: MultiVectors, max_block: int = DEFAULT_MAX_BLOCK):
    """Yield (doc_start, scores (n_queries x chunk docs)) over document chunks."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query token dims {queries.shape[1]} != document token dims {docs.shape[1]}")
    q = torch.from_numpy(np.ascontiguousarray(queries.values, dtype=np.float32))
    q_owner = _segment_ids(queries.lengths())
    n_q = len(queries)
    doc_tokens_per_block = max(1, max_block // max(1, len(q)))
    lengths = docs.lengths()
    start = 0
    with torch.inference_mode():
        while start < len(docs):
            # whole documents up to the token budget, and at least one however long
            limit = docs.offsets[start] + doc_tokens_per_block
            end = max(start + 1, int(np.searchsorted(docs.offsets, limit, side="right")) - 1)
            d = torch.from_numpy(np.ascontiguousarray(docs.values[docs.offsets[start] : docs.offsets[end]]))
            sim = d @ q.T  # (doc tokens in chunk, query tokens)
            best = torch.segment_reduce(sim, "max", lengths=torch.from_numpy(lengths[start:end]), axis=0)
            scores = torch.zeros((n_q, end - start), dtype=torch.float32).index_add_(0, q_owner, best.T)
            yield start, scores
            start = end


def maxsim_top_k(
    queries: MultiVectors, docs: MultiVectors, k: int, max_block: int = DEFAULT_MAX_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """MaxSim scores and document indices of the top `k` docs per query, best first."""
    k = min(k, len(docs))
    return merge_top_k(maxsim_scores(queries, docs, max_block), len(queries), k)


def maxsim_matrix(queries: MultiVectors, docs: MultiVectors, max_block: int = DEFAULT_MAX_BLOCK) -> np.ndarray:
    """Every (query, document) MaxSim score: (n_queries x n_docs); for analysis on slices."""
    out = np.empty((len(queries), len(docs)), dtype=np.float32)
    for start, scores in maxsim_scores(queries, docs, max_block):
        out[:, start : start + scores.shape[1]] = scores.numpy()
    return out


def maxsim_rescore(queries: MultiVectors, docs: MultiVectors, candidates: np.ndarray) -> np.ndarray:
    """Exact MaxSim of each query against its own candidate documents: (n_queries x candidates per
    query), candidates[i, j] a document index. One (candidate tokens x query tokens) product per query."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query token dims {queries.shape[1]} != document token dims {docs.shape[1]}")
    lengths = docs.lengths()
    out = np.empty(candidates.shape, dtype=np.float32)
    with torch.inference_mode():
        for i, cand in enumerate(candidates):
            rows = np.concatenate([np.arange(docs.offsets[j], docs.offsets[j + 1]) for j in cand])
            sim = torch.from_numpy(docs.values[rows]) @ torch.from_numpy(np.ascontiguousarray(queries.item(i))).T
            best = torch.segment_reduce(sim, "max", lengths=torch.from_numpy(lengths[cand]), axis=0)
            out[i] = best.sum(dim=1).numpy()
    return out
