"""Drift checks of a Finesse task's main score (average_rss for RSS tasks, average_srs for SRS tasks: the task's
target_metrics) against the model config's targets / measurements, with the same code
and margins as every other eval (sie_evals/lib/gates/drift.py, lib/gates/thresholds.py). Saved entries live under
targets[<task>][<profile>]["probes"]."""

from typing import Any

import dagster as dg

from sie_evals.defs.evals.checks import to_check_result
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.defs.finesse.assets import finesse_scores
from sie_evals.defs.finesse.partitions import finesse_partitions
from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.gates.drift import CheckResult, check_source, reference
from sie_evals.lib.gates.keys import EvalKey, ResultKey
from sie_evals.lib.gates.thresholds import Against
from sie_evals.lib.tasks import resolve_task


def finesse_drift(partition_key: str, scores: dict[str, Any], against: Against, settings: EvalSettings) -> CheckResult:
    key = EvalKey.parse(partition_key)
    config = find_model_config(key.model, settings.configs_dir())
    spec = resolve_task(key.task)
    result_key = ResultKey.finesse(config.short_name, spec.task_id, scores["profile"])
    ref = reference(against.value, config, spec, result_key)
    return check_source(
        key.source,
        scores["metrics"],
        None,
        against,
        ref,
        config,
        spec,
        False,
        spec.rules.target_metrics,
        result_key,
        scores.get("conditions"),
    )


@dg.asset_check(
    asset=finesse_scores,
    partitions_def=finesse_partitions,
    blocking=True,
    description="The task's main score (average_rss, or average_srs for SRS tasks) >= 0.99 x the saved target "
    "(margins: lib/gates/thresholds.py). Blocking, ERROR.",
)
def finesse_rss_vs_target(
    context: dg.AssetCheckExecutionContext, finesse_scores: dict[str, Any], settings: EvalSettings
) -> dg.AssetCheckResult:
    return to_check_result(
        finesse_drift(context.partition_key, finesse_scores, Against.targets, settings),
        dg.AssetCheckSeverity.ERROR,
        context.log,
    )


@dg.asset_check(
    asset=finesse_scores,
    partitions_def=finesse_partitions,
    description="The task's main score (average_rss / average_srs) >= 0.98 x the latest saved measurement. WARN.",
)
def finesse_rss_vs_measurement(
    context: dg.AssetCheckExecutionContext, finesse_scores: dict[str, Any], settings: EvalSettings
) -> dg.AssetCheckResult:
    return to_check_result(
        finesse_drift(context.partition_key, finesse_scores, Against.measurements, settings),
        dg.AssetCheckSeverity.WARN,
        context.log,
    )
