"""The running top k behind every exact search (lib/quality/top_k.RunningTopK): identical results to a
full sort whatever the block sizes, layouts and merge timing, and the selection work kept off the
matrix product (issue 26 item 5)."""

import numpy as np
import pytest
import torch

from sie_evals.lib.quality import search, top_k
from sie_evals.lib.quality.search import exact_top_k
from sie_evals.lib.quality.top_k import merge_top_k


def _expected(full: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented order: score descending, then document index ascending; the first k."""
    order = np.lexsort((np.broadcast_to(np.arange(full.shape[1]), full.shape), -full), axis=1)[:, :k]
    return np.take_along_axis(full, order, 1), order


def _blocks(full: np.ndarray, width: int, column_major: bool):
    for start in range(0, full.shape[1], width):
        block = full[:, start : start + width]
        yield start, (np.asfortranarray(block) if column_major else np.ascontiguousarray(block))


@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("width", [3, 97, 1000, 5000])
def test_blocks_of_any_width_and_layout_give_the_full_sort(width, column_major):
    rng = np.random.default_rng(7)
    full = rng.standard_normal((30, 5000)).astype(np.float32)
    full[:, 4000:] = np.round(full[:, 4000:], 1)  # frequent exact ties, late (after merges started)
    scores, idx = merge_top_k(_blocks(full, width, column_major), 30, 120)
    exp_s, exp_i = _expected(full, 120)
    np.testing.assert_array_equal(idx, exp_i)
    np.testing.assert_array_equal(scores, exp_s)


def test_a_torch_column_major_view_block_is_read_in_place():
    """The dense search yields (documents x queries) products as their transposed view."""
    rng = np.random.default_rng(8)
    full = rng.standard_normal((25, 3000)).astype(np.float32)
    chunks = ((s, torch.from_numpy(np.ascontiguousarray(full[:, s : s + 512].T)).T) for s in range(0, 3000, 512))
    scores, idx = merge_top_k(chunks, 25, 64)
    np.testing.assert_array_equal(idx, _expected(full, 64)[1])
    np.testing.assert_array_equal(scores, _expected(full, 64)[0])


def test_ties_with_the_kth_best_across_delayed_merges_keep_the_lower_index():
    """A later document tying with the k-th best never displaces it, even when candidates wait for
    a merge: every score is one of four values."""
    rng = np.random.default_rng(9)
    full = rng.integers(0, 4, (10, 4000)).astype(np.float32)
    _, idx = merge_top_k(_blocks(full, 64, False), 10, 300)
    np.testing.assert_array_equal(idx, _expected(full, 300)[1])


def test_selection_runs_once_per_doubling_not_once_per_block(monkeypatch):
    """The work beside the product: a full top k over the first block, then merges only when some
    query has gathered k candidates (about once per doubling of the documents seen), not per block.
    The previous search selected in every block (100 here)."""
    calls = []
    real_top = top_k._top
    monkeypatch.setattr(top_k, "_top", lambda *a, **kw: calls.append(a[0].shape) or real_top(*a, **kw))
    rng = np.random.default_rng(10)
    q = rng.standard_normal((50, 16)).astype(np.float32)
    d = rng.standard_normal((20_000, 16)).astype(np.float32)
    _, idx = exact_top_k(q, d, k=20, doc_chunk=200)
    assert 2 <= len(calls) <= 12, calls  # log2(20,000 / 200) = 6.6 doublings, plus the first block and the end
    qn, dn = torch.nn.functional.normalize(torch.from_numpy(q)), torch.nn.functional.normalize(torch.from_numpy(d))
    np.testing.assert_array_equal(idx, _expected((qn @ dn.T).numpy(), 20)[1])


def test_default_blocks_give_the_bits_of_the_previous_50000_document_product():
    """Results identical to the search before the block change: the same float32 scores, bit for bit,
    as torch-normalised queries x documents in 50,000-document chunks (its shapes and orientation)."""
    rng = np.random.default_rng(11)
    q = rng.standard_normal((64, 384)).astype(np.float32)
    d = rng.standard_normal((60_000, 384)).astype(np.float32)
    scores, idx = exact_top_k(q, d, k=1000)
    qn = torch.nn.functional.normalize(torch.from_numpy(q), dim=1)
    with torch.inference_mode():
        full = torch.cat(
            [qn @ torch.nn.functional.normalize(torch.from_numpy(d[s : s + 50_000]), dim=1).T for s in (0, 50_000)], 1
        ).numpy()
    exp_s, exp_i = _expected(full, 1000)
    np.testing.assert_array_equal(idx, exp_i)
    np.testing.assert_array_equal(scores, exp_s)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_selection_split_over_threads_gives_the_same_result(threads):
    """The comparison, scan and partitions run on row ranges in a thread pool (one range per torch
    thread): the result is the single-range one, with frequent ties and several merges."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(12)
        full = np.round(rng.standard_normal((400, 6000)), 2).astype(np.float32)
        for column_major in (False, True):
            scores, idx = merge_top_k(_blocks(full, 700, column_major), 400, 150)
            exp_s, exp_i = _expected(full, 150)
            np.testing.assert_array_equal(idx, exp_i)
            np.testing.assert_array_equal(scores, exp_s)
    finally:
        torch.set_num_threads(before)


def _split_sum_in_child(queue) -> None:
    queue.put(sum(top_k._by_rows(lambda rows: int(np.arange(1000)[rows].sum()), 1000)))


def test_thread_pool_works_in_a_forked_child():
    """The kept pool is per process: a child forked after a search (Dagster's forking executors) has
    none of the parent's pool threads, and reusing the parent's pool would wait forever."""
    import multiprocessing

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert sum(top_k._by_rows(lambda rows: int(np.arange(1000)[rows].sum()), 1000)) == 499500  # pool made
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_split_sum_in_child, args=(queue,))
        child.start()
        child.join(30)
        if child.is_alive():
            child.kill()
        assert child.exitcode == 0 and queue.get(timeout=1) == 499500
    finally:
        torch.set_num_threads(before)


def _cosine_product(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The reference scores: torch-normalised queries x documents in one product."""
    qn = torch.nn.functional.normalize(torch.from_numpy(q), dim=1)
    with torch.inference_mode():
        return (qn @ torch.nn.functional.normalize(torch.from_numpy(d), dim=1).T).numpy()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_after_the_first_block_product_and_compare_are_fused_in_tiles(monkeypatch, threads):
    """Issue 26 item 5: after the first block no (queries x block) product is written out and compared
    in a second pass (RunningTopK._above, the block-wide scan from memory); each worker compares its
    own cache-sized tile right after multiplying it. Same bits, same ranking, any thread count."""
    scans = []
    real_above = top_k.RunningTopK._above
    monkeypatch.setattr(
        top_k.RunningTopK, "_above", lambda self, s, start: scans.append(start) or real_above(self, s, start)
    )
    monkeypatch.setattr(search, "TILE_SCORES", 300 * 37)  # 37-document tiles: many per round, a ragged last one
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(13)
        q = rng.standard_normal((300, 384)).astype(np.float32)
        d = rng.standard_normal((20_000, 384)).astype(np.float32)
        scores, idx = exact_top_k(q, d, k=100, doc_chunk=2048)
    finally:
        torch.set_num_threads(before)
    assert scans == []
    exp_s, exp_i = _expected(_cosine_product(q, d), 100)
    np.testing.assert_array_equal(idx, exp_i)
    np.testing.assert_array_equal(scores, exp_s)  # bits, not a tolerance


def test_a_read_only_memory_map_is_scored_in_tiles(tmp_path):
    """The embedding cache hands the search read-only memory maps: tiles are copied into the worker's
    buffer and normalised there (torch wants writable memory), with the same bits."""
    rng = np.random.default_rng(14)
    q = rng.standard_normal((120, 64)).astype(np.float32)
    d = rng.standard_normal((9_000, 64)).astype(np.float32)
    np.save(tmp_path / "docs.npy", d)
    mapped = np.load(tmp_path / "docs.npy", mmap_mode="r")
    assert not mapped.flags.writeable
    for normalize in (True, False):
        scores, idx = search.inner_product_top_k(q, mapped, 50, doc_chunk=1000, normalize=normalize)
        full = _cosine_product(q, d) if normalize else (torch.from_numpy(q) @ torch.from_numpy(d).T).numpy()
        exp_s, exp_i = _expected(full, 50)
        np.testing.assert_array_equal(idx, exp_i)
        np.testing.assert_array_equal(scores, exp_s)


def test_a_round_with_too_many_candidates_takes_its_own_top_k(monkeypatch):
    """Scores rising with the document index: every tile of every round passes the thresholds, so the
    fused scan gives up at PACK_LIMIT x k a query and the round's own top k is merged instead."""
    fallbacks = []
    real = top_k.RunningTopK.add_block_top
    monkeypatch.setattr(top_k.RunningTopK, "add_block_top", lambda self, *a: fallbacks.append(a[0]) or real(self, *a))
    q = np.zeros((40, 8), np.float32)
    q[:, 0] = 1
    q[:, 2] = np.linspace(0, 0.1, 40)
    angle = np.linspace(1.5, 0.0, 6000)
    d = np.zeros((6000, 8), np.float32)
    d[:, 0], d[:, 1] = np.cos(angle), np.sin(angle)
    scores, idx = exact_top_k(q, d, k=30, doc_chunk=500)
    assert fallbacks == list(range(500, 6000, 500))
    exp_s, exp_i = _expected(_cosine_product(q, d), 30)
    np.testing.assert_array_equal(idx, exp_i)
    np.testing.assert_array_equal(scores, exp_s)


def test_workers_multiply_single_threaded_and_leave_every_other_threads_setting():
    """The workers' torch runs one thread each (their tiles are the parallelism); the caller's setting
    and the default a new thread takes are what they were."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fresh_default = top_k._in_new_thread(torch.get_num_threads)
        rng = np.random.default_rng(15)
        exact_top_k(
            rng.standard_normal((50, 16)).astype(np.float32),
            rng.standard_normal((5000, 16)).astype(np.float32),
            10,
            500,
        )
        assert torch.get_num_threads() == 2
        assert top_k._in_new_thread(torch.get_num_threads) == fresh_default
        pool = top_k.worker_pool(2, __import__("os").getpid(), "tiles")
        barrier = threading.Barrier(2)
        counts = [pool.submit(lambda: (barrier.wait(10), torch.get_num_threads())[1]) for _ in range(2)]
        assert [c.result() for c in counts] == [1, 1]
    finally:
        torch.set_num_threads(before)


def test_searches_from_two_threads_at_once_share_the_workers_safely():
    """Two callers (e.g. threaded Dagster steps) feed the same tile workers at the same time: each
    round has its own tiles, thresholds and candidates, so each gets its own search's result."""
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rng = np.random.default_rng(17)
        cases = [
            (rng.standard_normal((80, 48)).astype(np.float32), rng.standard_normal((12_000, 48)).astype(np.float32))
            for _ in range(2)
        ]
        expected = [exact_top_k(q, d, 40, doc_chunk=700) for q, d in cases]
        got: dict[int, tuple] = {}
        start = threading.Barrier(2)

        def run(i: int) -> None:
            torch.set_num_threads(2)
            start.wait(10)
            got[i] = exact_top_k(*cases[i], 40, doc_chunk=700)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for i in range(2):
            np.testing.assert_array_equal(got[i][1], expected[i][1])
            np.testing.assert_array_equal(got[i][0], expected[i][0])
    finally:
        torch.set_num_threads(before)


def test_k_above_the_first_block_and_float64_documents():
    """Blocks are selected in full until every query has k (here k spans three blocks), then the
    fused rounds; float64 documents are converted a tile at a time, with the float32 bits."""
    rng = np.random.default_rng(18)
    q = rng.standard_normal((30, 24)).astype(np.float32)
    d = rng.standard_normal((3000, 24))
    scores, idx = exact_top_k(q, d, k=250, doc_chunk=100)
    exp_s, exp_i = _expected(_cosine_product(q, d.astype(np.float32)), 250)
    np.testing.assert_array_equal(idx, exp_i)
    np.testing.assert_array_equal(scores, exp_s)
