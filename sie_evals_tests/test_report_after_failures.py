"""A nightly tick whose every eval cell fails still gets its eval report (on a real ephemeral instance,
with the real automation conditions and real failing runs): the report says which cells failed, in
which step and why, and is not requested again until something new happens."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from sie_evals.defs.evals.assets import embeddings, perf_scores, quality_scores, target_comparison, task_dataset
from sie_evals.defs.evals.checks import EVAL_CHECKS
from sie_evals.defs.evals.partitions import EVAL_CELLS
from sie_evals.defs.reports.assets import eval_report
from sie_evals_tests.test_automation import EVAL_ASSETS, MINILM, SCIFACT, STS, load_defs, tick_sync, write_config

ALL = [task_dataset, embeddings, quality_scores, perf_scores, target_comparison, eval_report, *EVAL_CHECKS]


def _requested(result) -> set[str]:
    return {r.key.to_user_string() for r in result.results if result.get_num_requested(r.key)}


def test_a_tick_whose_every_cell_fails_still_reports_why(tmp_path, eval_resources, monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    write_config(configs, MINILM, [SCIFACT, STS], ["local"])
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs))
    empty = tmp_path / "no-data"  # every cell's dataset is missing: task_dataset fails, nothing materializes
    empty.mkdir()
    resources = eval_resources(model_configs_dir=str(configs), data_dir=str(empty))
    instance = dg.DagsterInstance.ephemeral()
    tick_sync(instance, configs)
    cells = sorted(instance.get_dynamic_partitions(EVAL_CELLS))
    assert cells == [f"{MINILM}:{SCIFACT}:local", f"{MINILM}:{STS}:local"]

    defs = load_defs()
    night = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) + timedelta(days=1)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=night)
    tick = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=first.cursor, evaluation_time=night + timedelta(hours=1, minutes=1)
    )
    assert _requested(tick) == set(EVAL_ASSETS)  # the cron tick: every cell's chain, not the report yet
    for cell in cells:  # each cell's run, as the automation sensor launches it: it fails
        run = dg.materialize(
            ALL, selection=EVAL_ASSETS, partition_key=cell, instance=instance, resources=resources, raise_on_error=False
        )
        assert not run.success
    assert not instance.get_materialized_partitions(dg.AssetKey("quality_scores"))

    after = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=tick.cursor, evaluation_time=night + timedelta(hours=1, minutes=2)
    )
    assert _requested(after) == {"eval_report"}  # nothing updated, yet the evals it waited for are over

    report = dg.materialize(ALL, selection=[eval_report], instance=instance, resources=resources)
    metadata = report.asset_materializations_for_node("eval_report")[0].metadata
    assert metadata["partitions_failed"].value == 2 and metadata["partitions_missing"].value == 0
    md = (tmp_path / "results" / "reports" / "eval_report.md").read_text()
    assert "2 failed in their latest run" in md
    for cell in cells:
        run_id = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": cell}), limit=1)[
            0
        ].dagster_run.run_id
        line = next(line for line in md.splitlines() if line.startswith(f"- {cell}: run {run_id[:8]}"))
        task_folder = "scifact" if SCIFACT in cell else "stsbenchmark"
        assert "step task_dataset: DatasetError" in line and f"{empty / task_folder}" in line, line
        assert "no dataset folder" in line, line

    handled = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=after.cursor, evaluation_time=night + timedelta(hours=1, minutes=3)
    )
    assert _requested(handled) == set()  # reported once; the next night's failures report again
