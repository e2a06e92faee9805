"""Sharded embedding (issue 24 item 2): the shard plan's properties; sharded vectors equal the unsharded ones byte
for byte with the real MiniLM on real SciFact texts, where shards cut elsewhere do not; the merge never embeds
(a missing chunk, mixed engines or a changed config fail clearly); and the `embeddings` graph asset fans a large
cell out as shard steps whose merge equals the one-shard run (the deterministic batch-sensitive engine of
sharding_engine.py on a synthetic BEIR folder, in process; test_sharding_celery.py runs 300,000 documents on
two Celery workers)."""

from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from ruamel.yaml import YAML

from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.engines.cache import EmbeddingCache
from sie_evals.lib.engines.sharding import (
    Piece,
    Shard,
    embed_shard,
    merge_engine,
    plan_shards,
)
from sie_evals_tests.conftest import REPO_ROOT
from sie_evals_tests.sharding_engine import BATCHY, BatchSensitiveEngine, make_synthetic_beir

Q, D = EmbedKind.query, EmbedKind.document


# --- the plan ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queries", "docs", "shard_size", "chunk"),
    [(20, 200, 50, 32), (6980, 300_000, 100_000, 2048), (0, 5000, 1000, 64), (3, 10, 4, 1), (100, 4097, 2048, 2048)],
)
def test_plan_covers_every_row_once_in_whole_chunks(queries, docs, shard_size, chunk):
    sizes = {Q: queries, D: docs}
    shards = plan_shards(sizes, shard_size, chunk)
    assert len(shards) > 1  # every case here is above its shard size
    assert [s.index for s in shards] == list(range(len(shards))) and {s.count for s in shards} == {len(shards)}
    assert len({s.name for s in shards}) == len(shards) and all(s.name.isidentifier() for s in shards)
    for kind, n in sizes.items():
        rows = [r for s in shards for p in s.pieces if p.kind == kind for r in range(p.start, p.stop)]
        assert rows == list(range(n))  # each row once, in input order across the shards
    for s in shards:
        assert all(p.start % chunk == 0 and (p.stop % chunk == 0 or p.stop == sizes[p.kind]) for p in s.pieces)
        assert 0 < s.rows <= -(-shard_size // chunk) * chunk  # shard_size rounded up to whole chunks
        assert Shard.from_dict(s.as_dict()) == s
    assert not any(s.whole for s in shards)


def test_plan_is_one_shard_at_or_under_the_threshold_and_whole_when_inputs_are_unknown():
    assert plan_shards({Q: 20, D: 80}, 100, 2048) == [Shard(0, 1, (Piece(Q, 0, 20), Piece(D, 0, 80)))]
    assert len(plan_shards({Q: 20, D: 81}, 100, 2048)) == 2  # one row over: queries and documents apart
    assert plan_shards(None, 100, 2048) == [Shard(0, 1, (), whole=True)]
    with pytest.raises(ValueError, match="shard_size"):
        plan_shards({D: 10}, 0, 2048)


# --- byte identity with the real model --------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_torch(minilm):
    """The real MiniLM under torch, small batches, so that shards cut inside the length distribution."""
    from sie_evals.lib.config.model_config import Runtime
    from sie_evals.lib.engines.local import LocalEngine

    profile = minilm.resolve_profile("default").model_copy(update={"runtime": Runtime.torch})
    engine = LocalEngine(minilm, profile, threads=2, batch_size=8)
    yield engine
    engine.stop()


def _inputs(scifact_test, docs: int) -> dict[EmbedKind, list[str]]:
    """Real SciFact queries and documents, the documents cut to 4-32 words (lengths vary within every chunk)."""
    sub = scifact_test.take_subset(10, docs)
    return {
        Q: list(sub.query_texts),
        D: [" ".join(t.split()[: 4 + i % 29]) for i, t in enumerate(sub.corpus_texts[:docs])],
    }


def _sharded(engine, inputs, cache: EmbeddingCache, shard_size: int) -> dict[EmbedKind, np.ndarray]:
    shards = plan_shards({k: len(v) for k, v in inputs.items()}, shard_size, cache.chunk_size)
    reports = [embed_shard(engine, inputs, s, cache).as_dict() for s in shards]
    merging = merge_engine(engine.model, engine.profile, reports, str(cache.root))
    return {kind: cache.embed(merging, texts, kind) for kind, texts in inputs.items()}


@pytest.mark.slow  # five embedding passes of 130 short texts with the real model (~20-90 s on 2 loaded CPUs)
def test_sharded_real_vectors_equal_unsharded_byte_for_byte_and_other_cuts_do_not(minilm_torch, scifact_test, tmp_path):
    inputs = _inputs(scifact_test, 120)  # chunks of 16 texts, batches of 8: shards of 3 chunks cut inside
    unsharded_cache = EmbeddingCache(tmp_path / "one", chunk_size=16)
    unsharded = {kind: unsharded_cache.embed(minilm_torch, texts, kind) for kind, texts in inputs.items()}

    sharded = _sharded(minilm_torch, inputs, EmbeddingCache(tmp_path / "sharded", chunk_size=16), 40)
    for kind in inputs:
        assert sharded[kind].dtype == unsharded[kind].dtype
        assert sharded[kind].tobytes() == unsharded[kind].tobytes(), kind

    # Negative controls on the documents. Input-order shards of 40 (not whole chunks) change the engine's calls:
    docs = inputs[D]
    naive_cache = EmbeddingCache(tmp_path / "naive", chunk_size=16)
    naive = np.concatenate([naive_cache.embed(minilm_torch, docs[s : s + 40], D) for s in range(0, len(docs), 40)])
    assert not np.array_equal(naive, unsharded[D])
    assert np.allclose(naive, unsharded[D], atol=1e-5)  # the same vectors up to the last bits
    # ... and shards of the engine's own global length order, cut at batch boundaries, equal one engine call on
    # the whole corpus, which is not what the (cached, chunked) unsharded run computes.
    lengths = minilm_torch.tokenizer()(docs, truncation=True, max_length=256)["input_ids"]
    order = sorted(range(len(docs)), key=lambda i: -len(lengths[i]))
    by_length = np.empty_like(unsharded[D])
    for s in range(0, len(order), 32):
        part = sorted(order[s : s + 32])
        by_length[part] = minilm_torch.embed([docs[i] for i in part], D)
    assert by_length.tobytes() == minilm_torch.embed(docs, D).tobytes()
    assert not np.array_equal(by_length, unsharded[D])


# --- the merge embeds nothing ------------------------------------------------------------------------------


@pytest.fixture
def batchy(minilm):
    return BatchSensitiveEngine(minilm, minilm.resolve_profile("default"), batch_size=16)


def test_batch_sensitive_engine_at_scale_sharded_equals_unsharded(batchy, tmp_path):
    """20,000 texts, default chunks, 5,000-text shards: byte for byte, and a retried shard is all cache hits."""
    rng = np.random.default_rng(1)
    inputs = {
        Q: [f"q w{i}" for i in range(300)],
        D: [" ".join(["w"] * int(n)) + f" d{i}" for i, n in enumerate(rng.integers(1, 30, 20_000))],
    }
    cache = EmbeddingCache(tmp_path / "one")
    unsharded = {kind: cache.embed(batchy, texts, kind) for kind, texts in inputs.items()}
    sharded_cache = EmbeddingCache(tmp_path / "sharded")
    sharded = _sharded(batchy, inputs, sharded_cache, 5000)
    assert all(sharded[k].tobytes() == unsharded[k].tobytes() for k in inputs)
    shards = plan_shards({k: len(v) for k, v in inputs.items()}, 5000, sharded_cache.chunk_size)
    again = embed_shard(batchy, inputs, shards[1], sharded_cache)
    assert again.cache["misses"] == 0 and again.cache["hits"] > 0 and again.forward_calls == 0
    naive = np.concatenate([cache.embed(batchy, inputs[D][s : s + 5000], D) for s in range(0, 20_000, 5000)])
    assert not np.array_equal(naive, unsharded[D])  # the engine is batch-sensitive: cuts inside chunks show


def test_merge_fails_clearly_when_a_shard_is_missing_or_engines_differ(batchy, minilm, tmp_path):
    inputs = {D: [f"doc {i}" for i in range(100)]}
    cache = EmbeddingCache(tmp_path, chunk_size=32)
    shards = plan_shards({D: 100}, 32, 32)
    reports = [embed_shard(batchy, inputs, s, cache).as_dict() for s in shards[:-1]]  # the last shard never ran
    merging = merge_engine(minilm, batchy.profile, reports, str(cache.root))
    with pytest.raises(EngineError, match=r"4 document texts of a shard are not in the embedding cache at .*shared"):
        cache.embed(merging, inputs[D], D)

    other = dict(reports[0], identity={**reports[0]["identity"], "engine_version": "batchy 2"})
    other["engine_info"] = {**other["engine_info"], "version": "batchy 2"}
    with pytest.raises(EngineError, match=r"2 different engine identities .*batchy 1; batchy batchy 2"):
        merge_engine(minilm, batchy.profile, [reports[0], other], "cache")
    changed = batchy.profile.model_copy(update={"max_seq_length": 64})
    with pytest.raises(EngineError, match="the config changed since the shards were embedded"):
        merge_engine(minilm, changed, reports, "cache")


def test_a_shard_cut_inside_a_chunk_is_refused(batchy, tmp_path):
    inputs = {D: [f"doc {i}" for i in range(100)]}
    cache = EmbeddingCache(tmp_path, chunk_size=32)
    for piece in (Piece(D, 0, 50), Piece(D, 10, 64)):
        with pytest.raises(ValueError, match="is not a run of whole 32-row chunks"):
            embed_shard(batchy, inputs, Shard(0, 2, (piece,)), cache)
    assert embed_shard(batchy, inputs, Shard(1, 2, (Piece(D, 64, 100),)), cache).rows == 36  # the kind's end


# --- the Dagster graph asset -------------------------------------------------------------------------------

CELL = "all-MiniLM-L6-v2:beir/Synth:batchy"


def synth_configs(root: Path) -> Path:
    """One model config (MiniLM's, whose weights batchy never loads) declaring the synthetic task on batchy."""
    yaml = YAML()
    tree = yaml.load((REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml").read_text())
    tree["tasks"], tree["sources"], tree["targets"], tree["measurements"] = ["beir/Synth"], ["batchy"], {}, {}
    tree["profiles"] = {"default": tree["profiles"]["default"]}
    root.mkdir(parents=True)
    with open(root / "synth.yaml", "w") as fh:
        yaml.dump(tree, fh)
    return root


@pytest.fixture
def synth_source():
    from sie_evals.lib.core.sources import register_source, unregister_source

    register_source(BATCHY)
    yield
    unregister_source(BATCHY.name)


def materialize_synth(tmp_path: Path, name: str, configs: Path, data: Path, shard_size: int):
    from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
    from sie_evals.defs.evals.partitions import sync_partitions
    from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager

    settings = EvalSettings(
        data_dir=str(data),
        results_dir=str(tmp_path / name / "results"),
        cache_dir=str(tmp_path / name / "cache"),
        model_configs_dir=str(configs),
        shard_size=shard_size,
    )
    resources = {
        "settings": settings,
        "engines": EngineFactory(),
        "json_io": JsonIOManager(base_dir=str(tmp_path / name / "io")),
        "io_manager": JsonIOManager(base_dir=str(tmp_path / name / "io")),
    }
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, configs)
    return dg.materialize(
        [task_dataset, embeddings, quality_scores], partition_key=CELL, instance=instance, resources=resources
    )


def vector_bytes(result) -> dict[str, bytes]:
    return {kind: Path(path).read_bytes() for kind, path in result.output_for_node("embeddings")["vectors"].items()}


@pytest.mark.slow  # three in-process runs of the three assets on 9,000 documents (12-28 s here)
def test_graph_asset_shards_a_large_cell_and_merges_to_the_one_shard_result(synth_source, tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_synthetic_beir(data / "synth", docs=9000, queries=50)
    configs = synth_configs(tmp_path / "configs")
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs))
    one = materialize_synth(tmp_path, "one", configs, data, shard_size=1_000_000)
    sharded = materialize_synth(tmp_path, "sharded", configs, data, shard_size=4000)
    assert one.success and sharded.success

    steps = {e.step_key for e in sharded.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    names = ["shard_1_of_3", "shard_2_of_3", "shard_3_of_3"]  # 2 chunks of 2,048 texts each: 50 queries + 9,000 docs
    assert steps >= {"embeddings.plan_shards", "embeddings.merge_shards"} | {
        f"embeddings.embed_shard[{n}]" for n in names
    }
    assert {e.step_key for e in one.all_events if e.step_key and "embed_shard" in e.step_key} == {
        "embeddings.embed_shard[shard_1_of_1]"
    }
    shard_outputs = {
        e.step_key: {k: v.value for k, v in e.event_specific_data.metadata.items()}
        for e in sharded.all_events
        if e.event_type == dg.DagsterEventType.STEP_OUTPUT and "embed_shard" in e.step_key
    }
    assert sorted(m["rows"] for m in shard_outputs.values()) == sorted([50 + 2048, 2 * 2048, 9000 - 3 * 2048])
    assert all(m["cache_hit"] is False and m["cache_misses"] > 0 for m in shard_outputs.values())
    # the plan and the shard reports pass between steps as JSON on the shared store, not one worker's disk
    passed = sorted(p.name for p in (tmp_path / "sharded" / "io" / "steps").rglob("*.json"))
    assert passed == sorted(f"embeddings.{op}[{n}].result.json" for op in ("plan_shards", "embed_shard") for n in names)

    assert vector_bytes(sharded) == vector_bytes(one)
    assert sharded.output_for_node("quality_scores")["metrics"] == one.output_for_node("quality_scores")["metrics"]
    (mat_one,), (mat_sharded,) = (
        [
            m.materialization
            for m in r.get_asset_materialization_events()
            if m.materialization.asset_key.path == ["embeddings"]
        ]
        for r in (one, sharded)
    )
    assert mat_sharded.metadata["shards"].value == 3 and mat_one.metadata["shards"].value == 1
    for key in ("forward_calls", "cache_misses", "cache_hits", "document_vectors", "query_vectors", "dims"):
        assert mat_sharded.metadata[key] == mat_one.metadata[key], key

    # a re-run (or a retried shard, on any worker sharing the cache) embeds nothing again: every chunk a hit
    again = materialize_synth(tmp_path, "sharded", configs, data, shard_size=4000)
    rerun = [
        {k: v.value for k, v in e.event_specific_data.metadata.items()}
        for e in again.all_events
        if e.event_type == dg.DagsterEventType.STEP_OUTPUT and "embed_shard" in e.step_key
    ]
    assert len(rerun) == 3 and all(m["cache_hit"] and m["forward_calls"] == 0 for m in rerun)
    assert vector_bytes(again) == vector_bytes(one)


def test_a_run_of_embeddings_without_its_downstream_assets_can_start():
    """Materializing `embeddings` alone (or with task_dataset) from the UI or a backfill: the subset job's
    config schema needs the graph asset's output IO manager among the resources its ops require."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from sie_evals.defs.evals.assets import embeddings, task_dataset

    repo = ReconstructableRepository.for_module("sie_evals.definitions", "defs", working_directory=str(REPO_ROOT))
    job = repo.get_reconstructable_job("__ASSET_JOB")
    for selection in ({task_dataset.key, embeddings.key}, {embeddings.key}):
        subset = job.get_subset(asset_selection=selection).get_definition()
        assert "embeddings" in subset.run_config_schema.config_type.fields["ops"].config_type.fields
