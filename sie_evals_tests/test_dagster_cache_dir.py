"""The Dagster resource's `cache_dir` holds every cache of a step, as the CLI's --cache-dir does (N77):
an ONNX profile's export lands under it, not under $SIE_EVALS_CACHE_DIR."""

import dagster as dg
import pytest

from sie_evals.defs.evals.assets import embeddings, task_dataset
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager


@pytest.mark.slow
def test_embeddings_step_exports_under_the_resources_cache_dir(tmp_path, monkeypatch):
    elsewhere = tmp_path / "env-cache"
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(elsewhere))
    settings = EvalSettings(
        results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"), limit_queries=3, corpus_size=10
    )
    cell = "all-MiniLM-L6-v2@onnx:beir/SciFact:local"  # the onnx profile's cell
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("eval_cells", [cell])
    resources = {"settings": settings, "engines": EngineFactory(), "json_io": JsonIOManager(base_dir=str(tmp_path))}
    resources["io_manager"] = resources["json_io"]
    res = dg.materialize([task_dataset, embeddings], partition_key=cell, instance=instance, resources=resources)
    out = res.output_for_node("embeddings")  # a graph asset (shard steps): run as Dagster runs it

    assert out["cache"]["misses"] > 0
    exports = sorted(p.name for p in (tmp_path / "cache" / "exports").iterdir())
    assert len(exports) == 1 and exports[0].startswith("all-MiniLM-L6-v2-"), exports
    assert not elsewhere.exists() or not any(elsewhere.rglob("*")), sorted(elsewhere.rglob("*"))
