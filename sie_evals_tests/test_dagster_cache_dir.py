"""The Dagster resource's `cache_dir` holds every cache of a step, as the CLI's --cache-dir does (N77):
an ONNX profile's export lands under it, not under $SIE_EVALS_CACHE_DIR."""

import dagster as dg
import pytest

from sie_evals.defs.evals.assets import embeddings, task_dataset
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings


@pytest.mark.slow
def test_embeddings_step_exports_under_the_resources_cache_dir(tmp_path, monkeypatch):
    elsewhere = tmp_path / "env-cache"
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(elsewhere))
    settings = EvalSettings(
        results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"), limit_queries=3, corpus_size=10
    )
    cell = "all-MiniLM-L6-v2@onnx:beir/SciFact:local"  # the onnx profile's cell, called directly
    snap = task_dataset(dg.build_asset_context(partition_key=cell), settings=settings).value
    context = dg.build_asset_context(partition_key=cell)
    out = next(iter(embeddings(context, task_dataset=snap, settings=settings, engines=EngineFactory()))).value

    assert out["cache"]["misses"] > 0
    exports = sorted(p.name for p in (tmp_path / "cache" / "exports").iterdir())
    assert len(exports) == 1 and exports[0].startswith("all-MiniLM-L6-v2-"), exports
    assert not elsewhere.exists() or not any(elsewhere.rglob("*")), sorted(elsewhere.rglob("*"))
