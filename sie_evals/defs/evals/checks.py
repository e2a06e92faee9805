"""Per-partition drift checks on quality_scores, using the same code as --check-targets and
--check-measurements (sie_evals/lib/drift.py, margins in lib/thresholds.py).

- quality_vs_target: blocking, ERROR. A failure fails the run, so nothing downstream of the scores
  runs on a drifted model.
- quality_vs_measurement: non-blocking, WARN, against the latest saved measurement (98%).
A partition with nothing saved passes with status "no target" in its metadata, as the CLI does."""

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from sie_evals.defs.evals.assets import quality_scores
from sie_evals.defs.evals.partitions import eval_partitions
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.lib.drift import CheckResult, check_source, reference
from sie_evals.lib.keys import EvalKey
from sie_evals.lib.model_config import find_model_config
from sie_evals.lib.tasks import resolve_task
from sie_evals.lib.thresholds import Against


def drift_check(partition_key: str, scores: dict[str, Any], against: Against, settings: EvalSettings) -> CheckResult:
    key = EvalKey.parse(partition_key)
    config = find_model_config(key.model, settings.configs_dir())
    spec = resolve_task(key.task)
    dataset = scores["dataset"]
    ref = reference(
        against.value,
        config,
        spec,
        scores["profile"],
        dataset["variant"],
        dataset["split"],
        bool(dataset.get("subset")),
    )
    per_query_path = Path(scores["per_query_path"])
    per_query = pd.read_parquet(per_query_path) if per_query_path.is_file() else None
    return check_source(
        key.source, scores["metrics"], per_query, against, ref, config, spec, False, spec.rules.target_metrics
    )


def _fmt(x: float | None, digits: int = 5) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _verdict_table(result: CheckResult) -> str:
    rows = [
        "| metric | value | target | ratio | margin | verdict | delta 95% CI | beyond noise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in result.verdicts:
        ci = v.get("delta_interval")
        interval = f"[{ci['low']:+.4f}, {ci['high']:+.4f}]" if ci else "-"
        beyond = ("yes" if ci["beyond_noise"] else "no") if ci else "-"
        rows.append(
            f"| {v['metric']} | {_fmt(v['value'])} | {_fmt(v['reference'])} | {_fmt(v['ratio'], 4)} "
            f"| {v['margin']:g} | {v['status']} | {interval} | {beyond} |"
        )
    return "\n".join(rows)


def to_check_result(result: CheckResult, severity: dg.AssetCheckSeverity) -> dg.AssetCheckResult:
    failed = [v for v in result.verdicts if not v["passed"]]
    metadata: dict[str, Any] = {
        "verdicts": dg.MetadataValue.md(_verdict_table(result)),
        "reference": dg.MetadataValue.json(result.reference or {"status": "no target"}),
    }
    for v in result.verdicts:
        if v["ratio"] is not None:
            metadata[f"{v['metric']}_ratio"] = float(v["ratio"])
        if v["value"] is not None:
            metadata[f"{v['metric']}_value"] = float(v["value"])
    if failed:
        description = "drift: " + ", ".join(
            f"{v['metric']} {v['value']:.5f} vs {v['reference']:.5f} (ratio {v['ratio']:.4f}, margin {v['margin']:g})"
            for v in failed
        )
    elif result.reference is None:
        description = "no target saved for this partition"
    else:
        description = f"all {len(result.verdicts)} metrics within margin"
    return dg.AssetCheckResult(passed=not failed, severity=severity, metadata=metadata, description=description)


@dg.asset_check(
    asset=quality_scores,
    partitions_def=eval_partitions,
    blocking=True,
    description="Quality >= 0.99 x the saved target (margins: lib/thresholds.py). Blocking, ERROR.",
)
def quality_vs_target(
    context: dg.AssetCheckExecutionContext, quality_scores: dict[str, Any], settings: EvalSettings
) -> dg.AssetCheckResult:
    result = drift_check(context.partition_key, quality_scores, Against.targets, settings)
    return to_check_result(result, dg.AssetCheckSeverity.ERROR)


@dg.asset_check(
    asset=quality_scores,
    partitions_def=eval_partitions,
    description="Quality >= 0.98 x the latest saved measurement. WARN.",
)
def quality_vs_measurement(
    context: dg.AssetCheckExecutionContext, quality_scores: dict[str, Any], settings: EvalSettings
) -> dg.AssetCheckResult:
    result = drift_check(context.partition_key, quality_scores, Against.measurements, settings)
    return to_check_result(result, dg.AssetCheckSeverity.WARN)
