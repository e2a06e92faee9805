"""Exact top-k retrieval (no approximate index) at the speed of the matrix product.

Like MTEB: cosine similarity in float32 (vectors normalised with torch in float32) and the top k (1000)
documents per query. Documents are scored in chunks (a memory-mapped corpus is never copied whole) and
merged into a running top-k. Selecting the top k is kept off the critical path: after the first chunk,
only the scores above each query's current k-th best can enter (one comparison per score, typically a
few in a thousand pass), so the cost beside the matrix product is a compare and a small merge, not a
`torch.topk` over every chunk. The scores are the same float32 products as before (same chunk shapes).

Tie order, documented and deterministic: every result row is best first, by score descending then
document index ascending, and documents tied at the k-th score are kept lowest index first: the top k
are the first k documents in (score desc, index asc) order, as a full stable sort would give.
"""

from collections.abc import Iterable

import numpy as np
import torch

DEFAULT_DOC_CHUNK = 50_000
PACK_LIMIT = 4  # candidates per row of one chunk, in multiples of k, merged without a full topk


def _unit(x: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if not arr.flags.writeable:  # a read-only memory map (embedding cache): torch wants writable memory
        arr = arr.copy()  # one chunk, which normalize() would allocate anyway
    t = torch.from_numpy(arr)
    return torch.nn.functional.normalize(t, p=2, dim=1)


def _scored_chunks(q: torch.Tensor, docs: np.ndarray, doc_chunk: int, normalize: bool):
    """(start, scores) per chunk of documents, into buffers allocated once: a fresh (queries x chunk)
    product per chunk would page-fault hundreds of MiB each time. Each yielded tensor is overwritten
    by the next chunk (merge_top_k keeps only copies)."""
    n, dims = docs.shape
    width = min(doc_chunk, n)
    doc_buf = torch.empty((width, dims), dtype=torch.float32)
    out_buf = torch.empty(q.shape[0] * width, dtype=torch.float32)
    for start in range(0, n, doc_chunk):
        rows = min(doc_chunk, n - start)
        src = np.ascontiguousarray(docs[start : start + rows], dtype=np.float32)
        d = doc_buf[:rows]
        if not src.flags.writeable:  # a read-only memory map (embedding cache): torch wants writable memory
            d.numpy()[...] = src
            src = d.numpy()
        elif not normalize:
            d = torch.from_numpy(src)
        if normalize:  # torch.nn.functional.normalize's own ops (x / max(norm, eps)): the same bits
            t = torch.from_numpy(src)
            torch.div(t, t.norm(2, 1, keepdim=True).clamp_min(1e-12), out=d)
        scores = out_buf[: q.shape[0] * rows].view(q.shape[0], rows)
        torch.matmul(q, d.T, out=scores)
        yield start, scores


def inner_product_top_k(
    queries: np.ndarray, docs: np.ndarray, k: int, doc_chunk: int = DEFAULT_DOC_CHUNK, normalize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top `k` per query (cosine when `normalize`: queries and each document chunk
    normalised in float32 first). Returns (scores, indices), each (n_queries, min(k, n_docs))."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query dims {queries.shape[1]} != document dims {docs.shape[1]}")
    k = min(k, docs.shape[0])
    q = _unit(queries) if normalize else torch.from_numpy(np.array(queries, dtype=np.float32))
    with torch.inference_mode():
        return merge_top_k(_scored_chunks(q, docs, doc_chunk, normalize), q.shape[0], k)


def exact_top_k(
    queries: np.ndarray, docs: np.ndarray, k: int, doc_chunk: int = DEFAULT_DOC_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores and document indices of the top `k` docs per query, best first.

    Returns (scores, indices), each (n_queries, min(k, n_docs))."""
    return inner_product_top_k(queries, docs, k, doc_chunk, normalize=True)


def sort_rows(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by score descending, then document index ascending (the documented tie order)."""
    order = np.lexsort((indices, -scores), axis=-1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def _top(s: torch.Tensor, i: torch.Tensor | None, k: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k of each row of scores `s` (document indices `i`, or start + column when None). A tie
    across the cut-off keeps the lower document indices: rows whose k-th and (k+1)-th scores are equal
    (rare: exact ties) are ordered by (score desc, index asc) in full."""
    if s.shape[1] <= k:
        if i is None:  # a chunk's scores (a buffer the next chunk overwrites): copied
            return s.clone(), torch.arange(start, start + s.shape[1]).expand(s.shape[0], -1).clone()
        return s, i
    vals, pos = torch.topk(s, k + 1, dim=1)
    top_s, top_i = vals[:, :k].contiguous(), (pos[:, :k] + start if i is None else torch.gather(i, 1, pos[:, :k]))
    tied = (vals[:, k - 1] == vals[:, k]).nonzero().flatten()
    if len(tied):
        rows_s = s[tied].numpy()
        rows_i = np.arange(start, start + s.shape[1])[None, :].repeat(len(tied), 0) if i is None else i[tied].numpy()
        order = np.lexsort((rows_i, -rows_s), axis=-1)[:, :k]
        top_s[tied] = torch.from_numpy(np.take_along_axis(rows_s, order, 1))
        top_i[tied] = torch.from_numpy(np.take_along_axis(rows_i, order, 1))
    return top_s, top_i


def _above(scores: torch.Tensor, threshold: torch.Tensor, start: int, k: int):
    """The scores of one chunk strictly above each row's threshold, packed left into (rows x most per
    row) with -inf padding, and their document indices; None when some row has more than
    PACK_LIMIT x k (adversarial order, e.g. ascending scores: then the chunk's own top k is cheaper)."""
    rows, cols = (scores > threshold[:, None]).nonzero(as_tuple=True)  # row-major: columns ascending
    counts = torch.bincount(rows, minlength=scores.shape[0])  # (a bool sum(dim=1) is 10x slower)
    most = int(counts.max()) if len(rows) else 0
    if most > PACK_LIMIT * k:
        return None
    pos = torch.arange(len(rows)) - (torch.cumsum(counts, 0) - counts)[rows]
    out_s = torch.full((scores.shape[0], most), float("-inf"), dtype=scores.dtype)
    out_i = torch.zeros((scores.shape[0], most), dtype=torch.long)
    out_s[rows, pos] = scores[rows, cols]
    out_i[rows, pos] = cols + start
    return out_s, out_i


def merge_top_k(chunks: Iterable, n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The running top-k of every exact search here (dense, sparse, MaxSim, MUVERA): `chunks` yields
    (first document index, scores (n_queries x chunk docs)); memory stays at (queries x (k + chunk)).
    Rows best first, ties by document index ascending."""
    best_s = torch.empty((n_queries, 0), dtype=torch.float32)
    best_i = torch.empty((n_queries, 0), dtype=torch.long)
    for start, scores in chunks:
        scores = torch.as_tensor(scores, dtype=torch.float32)
        # strictly above the k-th best: a later document tying with it never displaces it
        packed = _above(scores, best_s.amin(dim=1), start, k) if best_s.shape[1] == k and k > 0 else None
        if packed is None:
            packed = _top(scores, None, k, start)
        if best_s.shape[1] == 0:
            best_s, best_i = packed
        elif packed[0].shape[1]:
            best_s, best_i = _top(torch.cat([best_s, packed[0]], 1), torch.cat([best_i, packed[1]], 1), k)
    return sort_rows(best_s.numpy(), best_i.numpy())


def to_run(
    query_ids: list[str], doc_ids: list[str], scores: np.ndarray, indices: np.ndarray
) -> dict[str, dict[str, float]]:
    """The TREC-style run pytrec_eval takes: {query_id: {doc_id: score}}, rows in rank order. Built a
    row at a time (vectorised id lookup, float32 -> Python float by tolist), not a pair at a time."""
    if len(query_ids) == 0:
        return {}
    ids = np.asarray(doc_ids, dtype=object)[indices]
    return {
        qid: dict(zip(id_row, score_row, strict=True))
        for qid, id_row, score_row in zip(query_ids, ids.tolist(), np.asarray(scores).tolist(), strict=True)
    }
