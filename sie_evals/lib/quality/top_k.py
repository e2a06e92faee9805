"""The running top k behind every exact search here (dense, sparse, MaxSim, MUVERA), and the worker
threads the searches share.

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

PACK_LIMIT = 4  # candidates of one block, in multiples of k a query, merged without the block's own top k


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
def worker_pool(workers: int, pid: int, role: str) -> ThreadPoolExecutor:
    """`workers` threads whose torch runs single-threaded (a worker's product is its share of the cores:
    no OpenMP team inside it), kept (starting threads per block costs), one per process and `role` (the
    tile scans, and the row ranges of _by_rows that a merge runs while the next scan is under way): a
    forked child has none of its threads. torch.set_num_threads is per thread for OpenMP and MKL, but it
    also stores the default that threads starting torch later take: put back once all have started."""
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
    pool = worker_pool(torch.get_num_threads(), os.getpid(), "rows")  # not the tile workers': they may be busy
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
