import numpy as np
import pytest

from sie_evals.lib.config.model_config import OutputType
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines import EmbedKind, Engine, EngineInfo
from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache


class CountingEngine(Engine):
    """A deterministic engine (hash-seeded vectors) that counts calls; cache behaviour, not model
    behaviour, is under test here (the real engine is covered in test_local_engine/test_cli)."""

    name = "counting"

    def info(self) -> EngineInfo:
        return EngineInfo("counting", "1", self.model.model_id, self.model.revision, "none")

    def _embed_prepared(self, texts, kind=None):
        self.forward_calls += 1
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in texts])


@pytest.fixture
def engine(minilm):
    return CountingEngine(minilm, minilm.resolve_profile("default"))


def test_second_call_is_served_from_cache(tmp_path, engine):
    cache = EmbeddingCache(tmp_path, chunk_size=4)
    texts = [f"text {i}" for i in range(10)]
    first = cache.embed(engine, texts, EmbedKind.document, s1 := CacheStats())
    assert s1.misses == 3 and engine.forward_calls == 3
    second = cache.embed(engine, texts, EmbedKind.document, s2 := CacheStats())
    assert s2.hits == 3 and s2.misses == 0 and engine.forward_calls == 3
    np.testing.assert_array_equal(first, second)


def test_key_depends_on_kind_texts_and_profile(tmp_path, engine, minilm):
    cache = EmbeddingCache(tmp_path)
    ident = {"x": 1}
    k = cache.key(ident, EmbedKind.query, ["a"])
    assert k != cache.key(ident, EmbedKind.document, ["a"])
    assert k != cache.key(ident, EmbedKind.query, ["a "])
    assert cache.key(ident, EmbedKind.query, ["ab", "c"]) != cache.key(ident, EmbedKind.query, ["a", "bc"])
    other = CountingEngine(minilm, minilm.resolve_profile("bf16"))
    cache.embed(engine, ["a"], EmbedKind.query)
    cache.embed(other, ["a"], EmbedKind.query, s := CacheStats())
    assert s.misses == 1  # another dtype is another cache entry


# sidecars that are valid JSON but not the object the cache writes, or not text at all
BAD_SIDECARS = {
    "sidecar-list": b"[]",
    "sidecar-null": b"null",
    "sidecar-sha-null": b'{"sha256": null}',
    "sidecar-latin1": b'{"sha256": "\xe9"}',
}


@pytest.mark.parametrize("damage", ["flip", "truncate", "sidecar", *BAD_SIDECARS])
def test_corrupt_entry_is_detected_and_recomputed(tmp_path, engine, damage):
    cache = EmbeddingCache(tmp_path)
    texts = ["alpha", "beta"]
    good = cache.embed(engine, texts, EmbedKind.document)
    npy = next((tmp_path / "embeddings").rglob("*.npy"))
    meta = npy.with_suffix(".json")
    if damage == "flip":
        raw = bytearray(npy.read_bytes())
        raw[-3] ^= 0xFF
        npy.write_bytes(bytes(raw))
    elif damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:40])
    elif damage in BAD_SIDECARS:
        meta.write_bytes(BAD_SIDECARS[damage])
    else:
        meta.write_text("{broken")
    again = cache.embed(engine, texts, EmbedKind.document, s := CacheStats())
    assert s.corrupt == 1 and s.misses == 1 and engine.forward_calls == 2
    np.testing.assert_array_equal(good, again)
    cache.embed(engine, texts, EmbedKind.document, s2 := CacheStats())
    assert s2.hits == 1  # the rewritten entry is good


def test_no_temp_files_left_behind(tmp_path, engine):
    EmbeddingCache(tmp_path).embed(engine, ["a", "b"], EmbedKind.query)
    assert not list(tmp_path.rglob("*.tmp"))


def test_large_dense_output_is_a_read_only_memmap_identical_to_the_in_memory_path(tmp_path, local_engine, scifact_test):
    """A real SciFact slice through the real model, with the memory-map threshold lowered to the slice: the
    cache returns a read-only memory map holding exactly the vectors of the in-memory path (same nDCG@10 through
    the real retrieval scoring), and leaves no file behind."""
    import warnings

    from sie_evals.lib.quality.task_types import score_task
    from sie_evals.lib.tasks import resolve_task

    spec = resolve_task("beir/SciFact")
    data = scifact_test.take_subset(10, 100)
    in_memory = EmbeddingCache(tmp_path, chunk_size=40, memmap_min_rows=None)
    mapped = EmbeddingCache(tmp_path, chunk_size=40, memmap_min_rows=60)
    queries = in_memory.embed(local_engine, data.query_texts, EmbedKind.query)
    docs = in_memory.embed(local_engine, data.corpus_texts, EmbedKind.document)
    assert type(docs) is np.ndarray and len(docs) == 100
    docs_mapped = mapped.embed(local_engine, data.corpus_texts, EmbedKind.document, s := CacheStats())
    assert s.hits == 3 and s.misses == 0  # assembled from the cached chunks (40 + 40 + 20 rows)
    assert isinstance(docs_mapped, np.memmap) and not docs_mapped.flags.writeable
    assert docs_mapped.dtype == np.float32 and np.array_equal(docs, docs_mapped)
    with pytest.raises(ValueError):
        docs_mapped[0, 0] = 1.0
    assert not list((tmp_path / "memmap").iterdir())  # unlinked once open: nothing accumulates on disk
    assert type(mapped.embed(local_engine, data.query_texts, EmbedKind.query)) is np.ndarray  # 10 rows: in memory
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's non-writable-array warning included
        ref, _ = score_task(spec, data, {EmbedKind.query: queries, EmbedKind.document: docs})
        got, _ = score_task(spec, data, {EmbedKind.query: queries, EmbedKind.document: docs_mapped})
    assert got == ref and ref["ndcg_at_10"] > 0.3
    assert not list((tmp_path / "memmap").iterdir())
    assert not list(tmp_path.rglob("*.tmp"))


def test_memmap_only_at_the_threshold_and_when_the_caller_allows_it(tmp_path, engine):
    cache = EmbeddingCache(tmp_path, chunk_size=4, memmap_min_rows=5)
    texts = [f"text {i}" for i in range(10)]
    assert isinstance(cache.embed(engine, texts, EmbedKind.document), np.memmap)
    out = cache.embed(engine, texts, EmbedKind.document, memmap=False)
    assert type(out) is np.ndarray and out.flags.writeable
    assert type(cache.embed(engine, texts[:4], EmbedKind.document)) is np.ndarray  # below the threshold


class TokenVectorsEngine(CountingEngine):
    """Multivector output (two token vectors per text), deterministic per text."""

    supported_outputs = frozenset({OutputType.dense, OutputType.multivector})

    def _embed_prepared(self, texts, kind=None):
        from sie_evals.lib.engines.vectors import MultiVectors

        self.forward_calls += 1
        rng = [np.random.default_rng(len(t)) for t in texts]
        return MultiVectors.from_list([r.normal(size=(2, 4)).astype(np.float32) for r in rng])


def test_multivector_output_above_the_threshold_stays_in_memory(tmp_path, minilm):
    from sie_evals.lib.engines.vectors import MultiVectors

    engine = TokenVectorsEngine(minilm, minilm.resolve_profile("multivector"))
    texts = [f"text {'x' * i}" for i in range(10)]
    mapped = EmbeddingCache(tmp_path, chunk_size=4, memmap_min_rows=5).embed(engine, texts, EmbedKind.document)
    plain = EmbeddingCache(tmp_path, chunk_size=4, memmap_min_rows=None).embed(engine, texts, EmbedKind.document)
    assert isinstance(mapped, MultiVectors) and len(mapped) == 10
    assert np.array_equal(mapped.values, plain.values) and np.array_equal(mapped.offsets, plain.offsets)
    assert not (tmp_path / "memmap").exists()


class FailingSecondCallEngine(CountingEngine):
    def _embed_prepared(self, texts, kind=None):
        if self.forward_calls == 1:
            raise EngineError("counting: server went away")
        return super()._embed_prepared(texts, kind)


def test_failure_while_assembling_a_memmap_leaves_nothing_and_keeps_finished_chunks(tmp_path, minilm):
    engine = FailingSecondCallEngine(minilm, minilm.resolve_profile("default"))
    cache = EmbeddingCache(tmp_path, chunk_size=4, memmap_min_rows=5)
    texts = [f"text {i}" for i in range(10)]
    with pytest.raises(EngineError, match="went away"):
        cache.embed(engine, texts, EmbedKind.document)
    assert not list((tmp_path / "memmap").iterdir())
    cache.embed(CountingEngine(minilm, minilm.resolve_profile("default")), texts, EmbedKind.document, s := CacheStats())
    assert s.hits == 1 and s.misses == 2  # the chunk finished before the failure was kept


def test_full_disk_is_a_clear_error_before_any_page_is_written(tmp_path, engine, monkeypatch):
    import errno
    import os

    def no_space(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)  # a full disk cannot be made here
    cache = EmbeddingCache(tmp_path, chunk_size=4, memmap_min_rows=5)
    with pytest.raises(EngineError, match=r"no room in .*memmap"):
        cache.embed(engine, [f"text {i}" for i in range(10)], EmbedKind.document)
    assert not list((tmp_path / "memmap").iterdir())


def test_output_files_round_trip_and_dense_ones_are_memory_mapped(tmp_path):
    """What the Dagster `embeddings` asset writes (`dump_to`) and `quality_scores` reads (`load_file`): a
    dense matrix comes back memory-mapped read-only and equal; sparse and multivector outputs exactly; a
    file with a NaN or of the wrong shape is refused."""
    import scipy.sparse as sp

    from sie_evals.lib.engines.serialization import dump_to, load_file
    from sie_evals.lib.engines.vectors import MultiVectors, SparseVectors

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((300, 16)).astype(np.float32)
    sparse = SparseVectors(sp.random(5, 50, density=0.2, format="csr", dtype=np.float32, random_state=1))
    multi = MultiVectors(rng.standard_normal((9, 4)).astype(np.float32), np.array([0, 2, 9], dtype=np.int64))
    for name, out in (("d.npy", dense), ("s.npz", sparse), ("m.npz", multi)):
        with open(tmp_path / name, "wb") as fh:
            dump_to(fh, out)
    loaded = load_file(tmp_path / "d.npy", rows=300)
    assert isinstance(loaded, np.memmap) and not loaded.flags.writeable and np.array_equal(loaded, dense)
    back = load_file(tmp_path / "s.npz", rows=5)
    assert (back.matrix != sparse.matrix).nnz == 0
    back = load_file(tmp_path / "m.npz", rows=2)
    assert np.array_equal(back.values, multi.values) and np.array_equal(back.offsets, multi.offsets)
    with pytest.raises(ValueError, match="expected 299"):
        load_file(tmp_path / "d.npy", rows=299)
    dense[123, 4] = np.nan
    with open(tmp_path / "nan.npy", "wb") as fh:
        dump_to(fh, dense)
    with pytest.raises(ValueError, match="non-finite"):
        load_file(tmp_path / "nan.npy")
