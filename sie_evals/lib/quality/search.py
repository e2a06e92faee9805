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

Tie order, documented and deterministic: every result row is best first, by score descending then
document index ascending, and documents tied at the k-th score are kept lowest index first: the top k
are the first k documents in (score desc, index asc) order, as a full stable sort would give.
"""

import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# Documents per block: large enough that the product is a few big sgemm calls (each call is a fork/join
# of the OpenMP threads, costly on a loaded machine: 4,096-document blocks, 245 calls for 1M documents,
# ran 1.18x the bare 50,000-chunk product with 2 threads there), small enough that the (queries x block)
# result does not page-fault a fresh buffer and the first block's full selection stays cheap.
DEFAULT_DOC_CHUNK = 16_384
PACK_LIMIT = 4  # candidates of one block, in multiples of k a query, merged without the block's own top k
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
        parts = [_scan_tiles(q, docs, tiles, width, job, normalize)]
        tasks = []
    else:
        pool = _pool(workers, os.getpid(), "tiles")
        tasks = [pool.submit(_scan_tiles, q, docs, tiles, width, job, normalize) for _ in range(workers)]

    def collect():
        found = parts if not tasks else [task.result() for task in tasks]
        if any(part is None for part in found):
            return None
        tiles_found = [c for part in found for c in part]
        if sum(len(c[0]) for c in tiles_found) > limit:
            return None
        return tuple(np.concatenate(cols) for cols in zip(*tiles_found, strict=True))

    return collect


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


def _single_threaded() -> None:
    torch.set_num_threads(1)
    torch.get_num_threads()  # torch's lazy per-thread init, now: later it would take the restored default


def _in_new_thread(fn: Callable, *args) -> object:
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    thread.join()
    return out[0]


@functools.cache
def _pool(workers: int, pid: int, role: str) -> ThreadPoolExecutor:
    """`workers` threads whose torch runs single-threaded (a worker's product is its share of the cores:
    no OpenMP team inside it), kept (starting threads per block costs), one per process and `role` (the
    tile scans, and the row ranges of _by_rows that a merge runs while the next scan is under way): a
    forked child has none of its threads. torch.set_num_threads is per thread for OpenMP and MKL, but it also stores
    the default that threads starting torch later take: that default is put back once all have started."""
    default = _in_new_thread(torch.get_num_threads)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="top-k", initializer=_single_threaded)
    started = threading.Barrier(workers)
    for f in [pool.submit(started.wait, 60) for _ in range(workers)]:
        f.result()
    _in_new_thread(torch.set_num_threads, default)
    return pool


def _by_rows(fn: Callable[[slice], object], n_rows: int) -> list:
    """fn over consecutive row ranges, one per torch thread, in order. numpy is single-threaded and
    releases the GIL in these loops, so the selection work beside the product uses every core the
    product does (with 2 threads it had been about 40% of the product's wall time, all on one core)."""
    parts = min(torch.get_num_threads(), max(1, n_rows // 64))
    if parts == 1:
        return [fn(slice(0, n_rows))]
    spans = [slice(int(a), int(b)) for a, b in itertools.pairwise(np.linspace(0, n_rows, parts + 1).astype(int))]
    pool = _pool(torch.get_num_threads(), os.getpid(), "rows")  # not the tile workers': they may be busy
    rest = [pool.submit(fn, span) for span in spans[1:]]
    return [fn(spans[0]), *(f.result() for f in rest)]


def sort_rows(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by score descending, then document index ascending (the documented tie order)."""
    out_s, out_i = np.empty_like(scores), np.empty_like(indices)

    def part(rows: slice) -> None:
        order = np.lexsort((indices[rows], -scores[rows]), axis=-1)
        out_s[rows], out_i[rows] = (
            np.take_along_axis(scores[rows], order, 1),
            np.take_along_axis(indices[rows], order, 1),
        )

    _by_rows(part, len(scores))
    return out_s, out_i


def _top(s: np.ndarray, i: np.ndarray | None, k: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each row of scores `s` (document indices `i`, or start + column when None), in no
    particular order. A tie across the cut-off keeps the lower document indices: rows whose k-th and
    (k+1)-th scores are equal (rare: exact ties) are ordered by (score desc, index asc) in full.
    np.argpartition, not torch.topk: 4-12x faster here for k = 1,000 of 2,000-16,000 (one thread)."""
    n = s.shape[1]
    if n <= k:
        if i is None:  # a block's scores (maybe a buffer the next block overwrites): copied
            return s.copy(), np.broadcast_to(np.arange(start, start + n), s.shape).copy()
        return s, i
    s = np.ascontiguousarray(s)  # a column-major block: row by row is 2x faster on a copy
    # ascending partition around the (k+1)-th best: the k after it are the top k (one kth: 5x faster
    # than two)
    part = np.concatenate(_by_rows(lambda rows: np.argpartition(s[rows], n - k - 1, axis=1), len(s)))
    pos = part[:, n - k :]
    top_s = np.take_along_axis(s, pos, 1)
    top_i = pos + start if i is None else np.take_along_axis(i, pos, 1)
    tied = np.flatnonzero(top_s.min(axis=1) == np.take_along_axis(s, part[:, n - k - 1 : n - k], 1)[:, 0])
    if len(tied):
        rows_i = np.broadcast_to(np.arange(start, start + n), (len(tied), n)) if i is None else i[tied]
        order = np.lexsort((rows_i, -s[tied]), axis=-1)[:, :k]
        top_s[tied] = np.take_along_axis(s[tied], order, 1)
        top_i[tied] = np.take_along_axis(rows_i, order, 1)
    return top_s, top_i


class RunningTopK:
    """The running top k of every exact search here (dense, sparse, MaxSim, MUVERA), fed one block of
    scores (n_queries x block documents) at a time. The first blocks are merged with a full top k;
    after that only scores strictly above each query's k-th best as of the last merge are kept as
    candidates (a later document tying with it never displaces it), and candidates are merged only
    once some query has k of them: the cost beside the matrix product is one comparison per score and
    a scan for the few that pass, not a top k per block. Blocks may be buffers the caller overwrites
    next: only copies are kept. Memory: (queries x (2k + block)). numpy throughout: its comparison,
    flatnonzero and argpartition were 2-12x torch's here (one thread each)."""

    def __init__(self, n_queries: int, k: int):
        self.k = k
        self.best_s = np.empty((n_queries, 0), dtype=np.float32)
        self.best_i = np.empty((n_queries, 0), dtype=np.int64)
        self.threshold = np.empty(0, dtype=np.float32)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, doc indices, scores)
        self.pending_per_row = np.zeros(n_queries, dtype=np.int64)
        self.mask = np.zeros(0, dtype=np.bool_)  # comparison buffer, reused

    def add(self, start: int, scores: torch.Tensor | np.ndarray) -> None:
        scores = np.asarray(scores.numpy() if isinstance(scores, torch.Tensor) else scores, dtype=np.float32)
        if self.k == 0:
            return
        if self.best_s.shape[1] < self.k:
            self._merge(_top(scores, None, self.k, start))
            return
        candidates = self._above(scores, start)
        if candidates is None:  # adversarial order (e.g. ascending scores): the block's own top k is cheaper
            self._merge(_top(scores, None, self.k, start))
            return
        self.add_candidates(candidates)

    @property
    def full(self) -> bool:
        """Every query has k documents: from here on `threshold` filters the candidates."""
        return self.best_s.shape[1] == self.k

    def add_block_top(self, start: int, scores: torch.Tensor | np.ndarray) -> None:
        """A block's own top k, merged at once (a block whose candidates were too many)."""
        scores = np.asarray(scores.numpy() if isinstance(scores, torch.Tensor) else scores, dtype=np.float32)
        self._merge(_top(scores, None, self.k, start))

    def add_candidates(self, candidates: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """(query rows, document indices, scores) of documents after every one added so far, each score
        strictly above its query's `threshold` (a stale threshold is fine: it is never above the current
        one); merged once some query has k of them."""
        self.pending.append(candidates)
        self.pending_per_row += np.bincount(candidates[0], minlength=len(self.pending_per_row))
        if self.pending_per_row.max() >= self.k:
            self._flush()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), each (n_queries, k or fewer when fewer documents were added), best first."""
        self._flush()
        return sort_rows(self.best_s, self.best_i)

    def _merge(self, top: tuple[np.ndarray, np.ndarray]) -> None:
        if self.best_s.shape[1] == 0:
            self.best_s, self.best_i = top
        elif top[0].shape[1]:
            s, i = np.concatenate([self.best_s, top[0]], 1), np.concatenate([self.best_i, top[1]], 1)
            self.best_s, self.best_i = _top(s, i, self.k)
        if self.best_s.shape[1] == self.k:
            self.threshold = self.best_s.min(axis=1)

    def _flush(self) -> None:
        if not self.pending:
            return
        rows, idx, vals = (np.concatenate(parts) for parts in zip(*self.pending, strict=True))
        self.pending.clear()
        counts, self.pending_per_row = self.pending_per_row, np.zeros_like(self.pending_per_row)
        # each query's row: its best so far, then its candidates (a stable sort by query, a radix sort on
        # 16 bits: 10x), then -inf; flat positions, not (row, column) pairs (2D fancy indexing: 3x slower)
        order = np.argsort(rows.astype(np.uint16) if len(counts) <= 1 << 16 else rows, kind="stable")
        have = self.best_s.shape[1]
        width = have + int(counts.max())
        row_start = np.arange(len(counts)) * width + have - (np.cumsum(counts) - counts)
        dest = np.arange(len(rows)) + row_start[rows[order]]
        packed_s = np.empty((len(counts), width), dtype=np.float32)
        packed_i = np.empty(packed_s.shape, dtype=np.int64)
        packed_s[:, :have], packed_i[:, :have] = self.best_s, self.best_i
        packed_s[:, have:] = -np.inf
        packed_i[:, have:] = 0
        packed_s.ravel()[dest] = vals[order]
        packed_i.ravel()[dest] = idx[order]
        self.best_s, self.best_i = _top(packed_s, packed_i, self.k)
        if self.best_s.shape[1] == self.k:
            self.threshold = self.best_s.min(axis=1)

    def _above(self, scores: np.ndarray, start: int):
        """(rows, document indices, scores) of the block's scores strictly above each row's threshold,
        in memory order; None when they average more than PACK_LIMIT x k a row (then the block's own top
        k is cheaper)."""
        n_q, n = scores.shape
        if len(self.mask) < n_q * n:
            self.mask = np.empty(n_q * n, dtype=np.bool_)
        by_doc = not scores.flags.c_contiguous and scores.T.flags.c_contiguous  # (documents x queries) memory
        block = scores.T if by_doc else np.ascontiguousarray(scores)
        mask = self.mask[: n_q * n].reshape(block.shape)
        threshold = self.threshold[None, :] if by_doc else self.threshold[:, None]

        def part(rows: slice) -> np.ndarray:
            np.greater(block[rows], threshold if by_doc else threshold[rows], out=mask[rows])
            return np.flatnonzero(mask[rows]) + rows.start * block.shape[1]

        flat = np.concatenate(_by_rows(part, len(block)))
        if len(flat) > PACK_LIMIT * n_q * self.k:
            return None
        if by_doc:
            cols, rows = np.divmod(flat, n_q)
        else:
            rows, cols = np.divmod(flat, n)
        return rows, cols + start, block.ravel()[flat]


def merge_top_k(chunks: Iterable, n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of (first document index, scores (n_queries x chunk docs)) blocks: RunningTopK over
    them. Rows best first, ties by document index ascending."""
    top = RunningTopK(n_queries, k)
    for start, scores in chunks:
        top.add(start, scores)
    return top.result()


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
