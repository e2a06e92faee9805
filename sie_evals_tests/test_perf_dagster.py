"""perf_scores in Dagster with a sweep and an SLO (settings perf_sweep / perf_slos): the saturation
plot is attached as metadata, the sweep rows and the SLO verdict are in the asset value."""

import dagster as dg
import pytest

from sie_evals.defs.evals.assets import perf_scores, task_dataset
from sie_evals.defs.evals.partitions import sync_partitions


@pytest.mark.slow
def test_perf_scores_sweep_attaches_the_saturation_plot(tmp_path, configs_dir, eval_resources):
    resources = eval_resources(
        limit_queries=10,
        corpus_size=50,
        perf_requests=4,
        perf_warmup_requests=1,
        perf_trials=1,
        perf_sweep="concurrency=1,2",
        perf_slos="p99_ms<=600000",
    )
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, configs_dir)  # the declared cells, as the sync sensor makes them
    key = "all-MiniLM-L6-v2:beir/SciFact:local"  # a declared cell: model:task:source
    assets = [task_dataset, perf_scores]
    assert dg.materialize(
        assets, selection=[task_dataset], partition_key=key, instance=instance, resources=resources
    ).success
    res = dg.materialize(assets, selection=[perf_scores], partition_key=key, instance=instance, resources=resources)
    assert res.success
    value = res.output_for_node("perf_scores")
    assert [r["value"] for r in value["sweep"]["rows"]] == [1, 2]
    # the ResultKey's load shape names the swept parameter (and the variant adds data, engine, hardware)
    assert value["result_key"]["load"].endswith("-sweep-concurrency") and value["variant"].startswith("perf@")
    assert value["slo"]["max_concurrency_at_slo"] == 2
    mat = res.get_asset_materialization_events()[0].materialization
    assert "saturation_plot" in mat.metadata and mat.metadata["load_shape"].value["mode"] == "closed"
    assert value["histogram_path"].endswith(".saturation.png")
