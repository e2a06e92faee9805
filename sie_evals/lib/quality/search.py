"""Exact top-k retrieval (no approximate index) at the speed of the matrix product.

Like MTEB: cosine similarity in float32 (vectors normalised with torch in float32) and the top k (1000)
documents per query. Documents are scored in blocks (a memory-mapped corpus is never copied whole) and
merged into a running top k (RunningTopK): after the first block only the scores above each query's
k-th best can enter (one comparison per score, typically a few in a thousand pass), so the cost beside
the matrix product is a compare and a small merge, not a `torch.topk` per block. After the first block
the dense search fuses product and compare (`_scan_round`): each torch thread's worker multiplies a tile
of documents small enough that its (documents x queries) scores are still in cache when it compares
them, single-threaded (no OpenMP fork/join per product, no second pass over a 64 MB block from memory).
The scores are the float32 products of torch-normalised vectors, bit for bit whatever the block or tile
size and thread count (MKL's sgemm sums each dot product in the same order; test_search_blocks checks it).
Tie order: lib/quality/top_k's (score descending, then document index ascending).
"""

import os
import threading

import numpy as np
import torch

from sie_evals.lib.quality.top_k import PACK_LIMIT, RunningTopK, worker_pool

# Documents per block: large enough that the product is a few big sgemm calls (each call is a fork/join
# of the OpenMP threads, costly on a loaded machine: 4,096-document blocks, 245 calls for 1M documents,
# ran 1.18x the bare 50,000-chunk product with 2 threads there), small enough that the (queries x block)
# result does not page-fault a fresh buffer and the first block's full selection stays cheap.
DEFAULT_DOC_CHUNK = 16_384
# Scores in one worker's tile (documents x queries): 2 MB of float32, which stays in L2/L3 between the
# product writing it and the compare reading it (512 documents a tile for 1,000 queries).
TILE_SCORES = 512 * 1000


def _unit(x: np.ndarray) -> torch.Tensor:
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if not arr.flags.writeable:  # a read-only memory map (embedding cache): torch wants writable memory
        arr = arr.copy()  # one chunk, which normalize() would allocate anyway
    t = torch.from_numpy(arr)
    return torch.nn.functional.normalize(t, p=2, dim=1)


def _doc_rows(docs: np.ndarray, start: int, rows: int, buf: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Documents [start, start + rows) as float32 rows, normalised when `normalize`: into `buf` (reused)
    unless they can be read in place."""
    src = np.ascontiguousarray(docs[start : start + rows], dtype=np.float32)
    d = buf[:rows]
    if not src.flags.writeable:  # a read-only memory map (embedding cache): torch wants writable memory
        d.numpy()[...] = src
        src = d.numpy()
    elif not normalize:
        return torch.from_numpy(src)
    if normalize:  # torch.nn.functional.normalize's own ops (x / max(norm, eps)): the same bits
        t = torch.from_numpy(src)
        torch.div(t, t.norm(2, 1, keepdim=True).clamp_min(1e-12), out=d)
    return d


def _scored_chunks(q: torch.Tensor, docs: np.ndarray, doc_chunk: int, normalize: bool, start: int = 0, stop=None):
    """(start, scores) per chunk of documents [start, stop), into buffers allocated once: a fresh
    (queries x chunk) product per chunk would page-fault hundreds of MiB each time. Each yielded tensor
    is overwritten by the next chunk (merge_top_k keeps only copies)."""
    stop = docs.shape[0] if stop is None else stop
    width = min(doc_chunk, stop - start)
    doc_buf = torch.empty((width, docs.shape[1]), dtype=torch.float32)
    out_buf = torch.empty(q.shape[0] * width, dtype=torch.float32)
    for begin in range(start, stop, doc_chunk):
        rows = min(doc_chunk, stop - begin)
        d = _doc_rows(docs, begin, rows, doc_buf, normalize)
        if begin == 0:  # selected in full, row by row: queries x documents
            scores = out_buf[: q.shape[0] * rows].view(q.shape[0], rows)
            torch.mm(q, d.T, out=scores)
            yield begin, scores
            continue
        # then documents x queries (5% faster here, the same bits), yielded as its transpose: a
        # column-major (queries x documents) view that RunningTopK scans in memory order
        scores = out_buf[: q.shape[0] * rows].view(rows, q.shape[0])
        torch.mm(d, q.T, out=scores)
        yield begin, scores.T


_tile_buffers = threading.local()  # each worker's (documents, scores, mask) tile buffers, kept between rounds


def _scan_tiles(q: torch.Tensor, docs: np.ndarray, tiles, width: int, job: dict, normalize: bool):
    """One worker's share of a round: tiles taken from the shared `tiles` iterator until it is empty,
    each normalised, multiplied (documents x queries, this thread's single-threaded torch) and compared
    with the round's thresholds at once, while its scores are in cache. Returns the candidates
    (query rows, document indices, scores) per tile, or None once the round has more than job["limit"]
    candidates (the caller then selects the round's own top k)."""
    n_q, dims = q.shape
    bufs = getattr(_tile_buffers, "bufs", None)
    if bufs is None or bufs[0].shape[0] < width or bufs[0].shape[1] != dims or bufs[2].size < width * n_q:
        bufs = _tile_buffers.bufs = (
            torch.empty((width, dims), dtype=torch.float32),
            torch.empty(width * n_q, dtype=torch.float32),
            np.empty(width * n_q, dtype=np.bool_),
        )
    doc_buf, out_buf, mask_buf = bufs
    threshold = job["threshold"][None, :]
    found = []
    with torch.inference_mode():
        while job["count"] <= job["limit"]:
            with job["lock"]:
                start, rows = next(tiles, (None, 0))
            if start is None:
                return found
            scores = out_buf[: rows * n_q].view(rows, n_q)
            torch.mm(_doc_rows(docs, start, rows, doc_buf, normalize), q.T, out=scores)
            block = scores.numpy()
            mask = mask_buf[: rows * n_q].reshape(rows, n_q)
            np.greater(block, threshold, out=mask)
            flat = np.flatnonzero(mask)
            job["count"] += len(flat)  # only a bail-out hint: exact totals are counted by the caller
            cols, query_rows = np.divmod(flat, n_q)
            found.append((query_rows, cols + start, block.ravel()[flat]))
    return None


def _scan_round(
    q: torch.Tensor, docs: np.ndarray, start: int, stop: int, threshold: np.ndarray, k: int, normalize: bool
):
    """Starts the scan of documents [start, stop) for scores above `threshold`, fused product and
    compare on every torch thread; returns the function that waits for its candidates: (query rows,
    document indices, scores), or None when they are more than PACK_LIMIT x k a query (adversarial order)."""
    workers = torch.get_num_threads()
    n_q = q.shape[0]
    width = max(16, TILE_SCORES // n_q)
    tiles = iter([(b, min(width, stop - b)) for b in range(start, stop, width)])
    limit = PACK_LIMIT * n_q * k
    job = {"threshold": threshold, "count": 0, "limit": limit, "lock": threading.Lock()}
    if workers == 1:  # this thread's torch is single-threaded already
        found = [_scan_tiles(q, docs, tiles, width, job, normalize)]
        return lambda: _gathered(found, limit)
    pool = worker_pool(workers, os.getpid(), "tiles")
    tasks = [pool.submit(_scan_tiles, q, docs, tiles, width, job, normalize) for _ in range(workers)]
    return lambda: _gathered([task.result() for task in tasks], limit)


def _gathered(found: list, limit: int):
    """The workers' candidates as one (query rows, document indices, scores), or None over `limit`."""
    if any(part is None for part in found):
        return None
    tiles_found = [c for part in found for c in part]
    if sum(len(c[0]) for c in tiles_found) > limit:
        return None
    return tuple(np.concatenate(cols) for cols in zip(*tiles_found, strict=True))


def inner_product_top_k(
    queries: np.ndarray, docs: np.ndarray, k: int, doc_chunk: int = DEFAULT_DOC_CHUNK, normalize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top `k` per query (cosine when `normalize`: queries and each document chunk
    normalised in float32 first). Returns (scores, indices), each (n_queries, min(k, n_docs)).
    The first blocks are selected in full (RunningTopK.add) until every query has k; the rest in rounds
    of `doc_chunk` documents by _scan_round, falling back to the block's own top k on overflow."""
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"query dims {queries.shape[1]} != document dims {docs.shape[1]}")
    k = min(k, docs.shape[0])
    q = _unit(queries) if normalize else torch.from_numpy(np.array(queries, dtype=np.float32))
    top = RunningTopK(q.shape[0], k)
    n = docs.shape[0]
    with torch.inference_mode():
        start = 0
        chunks = _scored_chunks(q, docs, doc_chunk, normalize)
        while start < n and not top.full:
            begin, scores = next(chunks)
            top.add(begin, scores)
            start = begin + scores.shape[1]
        # one round in flight ahead: the workers scan round r + 1 (with the thresholds as of round r - 1,
        # lower but valid: they come from documents before it) while this thread merges round r
        rounds = [(b, min(b + doc_chunk, n)) for b in range(start, n if q.shape[0] and k else 0, doc_chunk)]
        ahead = _scan_round(q, docs, *rounds[0], top.threshold, k, normalize) if rounds else None
        for i, (begin, stop) in enumerate(rounds):
            collect = ahead
            if i + 1 < len(rounds):
                ahead = _scan_round(q, docs, *rounds[i + 1], top.threshold, k, normalize)
            candidates = collect()
            if candidates is None:
                for block_start, scores in _scored_chunks(q, docs, doc_chunk, normalize, begin, stop):
                    top.add_block_top(block_start, scores)
            else:
                top.add_candidates(candidates)
    return top.result()


def exact_top_k(
    queries: np.ndarray, docs: np.ndarray, k: int, doc_chunk: int = DEFAULT_DOC_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores and document indices of the top `k` docs per query, best first.

    Returns (scores, indices), each (n_queries, min(k, n_docs))."""
    return inner_product_top_k(queries, docs, k, doc_chunk, normalize=True)


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
