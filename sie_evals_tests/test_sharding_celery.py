"""Issue 24's sharding acceptance: a synthetic BEIR corpus of 300,000 documents, embedded as shards over TWO
Celery workers on the `gpu` queue (plus one on `cpu`) with a real redis-server on 127.0.0.1, equals the unsharded
in-process run byte for byte (query and document vector files) and in every metric; the run log shows shard steps
on both gpu workers. The engine is the deterministic, batch-sensitive `batchy` (sharding_engine.py): the real
model embeds ~55 short texts/s on this 2-CPU machine, 300,000 of them twice would take hours; its byte identity
is tested on real SciFact texts in test_sharding.py."""

import json
import os
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals_tests.conftest import REPO_ROOT
from sie_evals_tests.sharding_engine import make_synthetic_beir
from sie_evals_tests.test_celery import Cluster, free_port, run_cell, run_text
from sie_evals_tests.test_sharding import CELL, materialize_synth, synth_configs, synth_source  # noqa: F401

pytestmark = pytest.mark.slow

DOCS, QUERIES = 300_000, 200
SHARD_SIZE = 80_000  # 40 chunks of 2,048 texts: the 1 + 147 chunks make 4 shards


def workers_by_step(run_id: str) -> dict[str, set[str]]:
    """Step key -> the Celery workers (by name) that executed it, from the run's engine events."""
    hosts: dict[str, set[str]] = {}
    for rec in dg.DagsterInstance.get().all_logs(run_id):
        ev = rec.dagster_event
        if ev is not None and ev.is_engine_event and "Executing steps" in (rec.message or ""):
            worker = ev.engine_event_data.metadata["Celery worker"].value
            hosts.setdefault(ev.step_key, set()).add(worker.split("@")[0])
    return hosts


def only_file(root: Path, pattern: str) -> Path:
    (found,) = root.rglob(pattern)
    return found


def test_300k_documents_sharded_over_two_gpu_workers_equal_the_unsharded_run(synth_source, tmp_path, monkeypatch):  # noqa: F811
    shared = tmp_path / "shared"  # what every worker sees: the instance, data, results, cache, configs
    data = shared / "data"
    make_synthetic_beir(data / "synth", DOCS, QUERIES)
    configs = synth_configs(shared / "model_configs")
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs))
    reference = materialize_synth(tmp_path, "ref", configs, data, shard_size=10 * DOCS)  # one shard, in process
    assert reference.success

    home = shared / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    port = free_port()
    env = {
        "DAGSTER_HOME": str(home),
        "SIE_EVALS_EXECUTOR": "celery",
        "SIE_EVALS_CELERY_BROKER": f"redis://127.0.0.1:{port}/0",
        "SIE_EVALS_DATA_DIR": str(data),
        "SIE_EVALS_RESULTS_DIR": str(shared / "results"),
        "SIE_EVALS_CACHE_DIR": str(shared / "cache"),
        "SIE_EVALS_MODEL_CONFIGS_DIR": str(configs),
        "SIE_EVALS_SHARD_SIZE": str(SHARD_SIZE),
        "HF_HUB_OFFLINE": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cluster = Cluster(tmp_path, {**os.environ, **env})
    try:
        cluster.start_redis(port)
        for queue, name in (("gpu", "gpu1"), ("gpu", "gpu2"), ("cpu", "cpu")):
            # the app that knows the batchy source
            cluster.start_worker(queue, name, app="sie_evals_tests.sharding_worker", timeout=180)
        sync_partitions(dg.DagsterInstance.get(), configs)
        res = run_cell(CELL, [task_dataset, embeddings, quality_scores])
        assert res.success, f"run failed; worker logs under {tmp_path}\n{run_text(res.run_id)[-3000:]}"
        hosts = workers_by_step(res.run_id)
    finally:
        cluster.stop()

    shard_steps = {step: who for step, who in hosts.items() if step.startswith("embeddings.embed_shard[")}
    assert sorted(shard_steps) == [f"embeddings.embed_shard[shard_{i}_of_4]" for i in range(1, 5)]
    assert {w for who in shard_steps.values() for w in who} == {"gpu1", "gpu2"}  # shards on both gpu workers
    assert hosts["embeddings.merge_shards"] == hosts["quality_scores"] == {"cpu"}

    for kind in ("query", "document"):
        ours = only_file(shared / "results" / "embeddings", f"{kind}.npy").read_bytes()
        theirs = only_file(tmp_path / "ref" / "results" / "embeddings", f"{kind}.npy").read_bytes()
        assert len(ours) > 4 * 32 * QUERIES and ours == theirs, kind
    mats = {
        m.asset_key.to_user_string(): m
        for m in (
            r.dagster_event.step_materialization_data.materialization
            for r in dg.DagsterInstance.get().all_logs(res.run_id)
            if r.dagster_event is not None and r.dagster_event.is_step_materialization
        )
    }
    # every metric, exactly: the quality_scores values (JSON IO manager) of both runs
    scores = json.loads(only_file(shared / "results" / "dagster" / "quality_scores", "*.json").read_text())
    ref_scores = json.loads(only_file(tmp_path / "ref" / "io" / "quality_scores", "*.json").read_text())
    assert scores["metrics"] == ref_scores["metrics"] and 0 < scores["metrics"]["ndcg_at_10"] < 1
    assert len(scores["metrics"]) > 10
    per_query = pd.read_parquet(only_file(shared / "results" / "quality_scores", "*.per_query.parquet"))
    ref_per_query = pd.read_parquet(only_file(tmp_path / "ref" / "results" / "quality_scores", "*.per_query.parquet"))
    pd.testing.assert_frame_equal(per_query, ref_per_query, check_exact=True)
    assert (
        mats["embeddings"].metadata["shards"].value == 4
        and mats["embeddings"].metadata["document_vectors"].value == DOCS
    )
