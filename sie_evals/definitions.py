"""Dagster definitions for sie-evals (loaded by workspace.yaml and `dagster dev`)."""

import dagster as dg

from sie_evals.defs.alerts.sensors import make_check_failure_sensor, run_failure_alerts
from sie_evals.defs.evals.assets import embeddings, perf_scores, quality_scores, target_comparison, task_dataset
from sie_evals.defs.evals.checks import EVAL_CHECKS
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager
from sie_evals.defs.evals.sensors import automation_sensor, eval_cells_sync
from sie_evals.defs.executors import executor_from_env
from sie_evals.defs.finesse.assets import finesse_embeddings, finesse_scores
from sie_evals.defs.finesse.checks import finesse_rss_vs_measurement, finesse_rss_vs_target
from sie_evals.defs.reports.assets import eval_report

ASSETS = [task_dataset, embeddings, quality_scores, perf_scores, target_comparison, eval_report]
ASSETS += [finesse_embeddings, finesse_scores]
CHECKS = [*EVAL_CHECKS, finesse_rss_vs_target, finesse_rss_vs_measurement]


@dg.definitions
def defs() -> dg.Definitions:
    check_keys = [key for check in CHECKS for key in check.check_keys]
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=CHECKS,
        sensors=[
            eval_cells_sync,
            automation_sensor,
            make_check_failure_sensor(check_keys),
            run_failure_alerts,
        ],
        resources={
            "settings": EvalSettings.from_env(),
            "engines": EngineFactory.from_env(),
            # step outputs on $SIE_EVALS_ARTIFACTS_URL (s3://, gs://) when set, so any worker reads them
            "json_io": JsonIOManager(),
            # The default IO manager is the same JSON store (never pickle): the graph asset `embeddings`
            # hands its value through it (assets.py, merge_shards).
            "io_manager": JsonIOManager(),
        },
        # $SIE_EVALS_EXECUTOR: in_process by default (the model loads once per run); celery/k8s
        # send each step to the queue its tags name (defs/executors.py).
        executor=executor_from_env(),
    )
