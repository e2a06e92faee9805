"""Per-partition drift checks on quality_scores, using the same code as --check-targets and
--check-measurements (sie_evals/lib/gates/drift.py, margins in lib/gates/thresholds.py).

- quality_vs_target: blocking, ERROR. A failure fails the run, so nothing downstream of the scores
  runs on a drifted model.
- quality_vs_measurement: non-blocking, WARN, against the latest saved measurement (98%).
- latency_vs_target / throughput_vs_target on perf_scores: non-blocking, WARN (latency <= 2.5 x
  target, throughput >= target / 2.5): perf on shared hardware is noisy, so it alerts, not blocks.
A partition with nothing saved passes, but says so: description "NO TARGET saved ... nothing was
checked", metadata `target_status: no target`, and a warning in the run log. A failure's description
names what changed in the run conditions since the last passing result (lib/gates/conditions.py); a
failed quality check's metadata holds the queries that regressed most against the reference (table
`regressed_queries`, ids and values in `regressed_query_ids`) and the run conditions that differ
from it (`conditions_vs_reference`). A passing check carries neither."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from sie_evals.defs.evals.assets import perf_scores, quality_scores
from sie_evals.defs.evals.partitions import eval_key, eval_partitions
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.gates.drift import CheckResult, ReferenceColumn, check_source, reference
from sie_evals.lib.gates.keys import ResultKey, ResultKind, split_model_part
from sie_evals.lib.gates.thresholds import Against, MetricKind, metric_kind
from sie_evals.lib.perf.load import PERF_TARGET_METRICS
from sie_evals.lib.reporting.regressions import changes_markdown, regressed_markdown
from sie_evals.lib.tasks import resolve_task
from sie_evals.lib.tasks.snapshot import read_snapshot


def drift_check(
    partition_key: str,
    scores: dict[str, Any],
    against: Against,
    settings: EvalSettings,
    kinds: tuple[MetricKind, ...] = (MetricKind.quality,),
) -> CheckResult:
    """Verdicts for the metrics of `kinds` in a quality_scores or perf_scores output, against what is
    saved under the output's ResultKey."""
    key = eval_key(partition_key)
    config = find_model_config(split_model_part(key.model)[0], settings.configs_dir())
    spec = resolve_task(key.task)
    result_key = ResultKey.from_dict(scores["result_key"])
    perf = result_key.kind is ResultKind.perf
    ref = reference(against.value, config, spec, result_key)
    if ref is not None:  # check only the metrics of this check's kinds; the other check covers the rest
        wanted = {m: v for m, v in ref.metrics.items() if metric_kind(m) in kinds}
        ref = ReferenceColumn(ref.source, wanted, ref.per_query, ref.info) if wanted else None
    per_query = None
    if not perf:
        per_query_path = Path(scores["per_query_path"])
        per_query = pd.read_parquet(per_query_path) if per_query_path.is_file() else None
    target_metrics = PERF_TARGET_METRICS if perf else spec.rules.target_metrics
    metrics = {m: v for m, v in scores["metrics"].items() if metric_kind(m) in kinds}
    return check_source(
        key.source,
        metrics,
        per_query,
        against,
        ref,
        config,
        spec,
        False,
        tuple(m for m in target_metrics if metric_kind(m) in kinds),
        result_key,
        scores.get("conditions"),
    )


def query_texts(scores: dict[str, Any]) -> dict[str, str]:
    """Query id -> text of the snapshot a quality_scores output was computed on; {} for a task whose
    snapshot has no query texts, or an output from before outputs named their snapshot."""
    if not scores.get("snapshot_dir"):
        return {}
    data = read_snapshot(Path(scores["snapshot_dir"]))
    ids, texts = getattr(data, "query_ids", None), getattr(data, "query_texts", None)
    return dict(zip(map(str, ids), texts, strict=True)) if ids is not None and texts is not None else {}


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


def _why_metadata(result: CheckResult, texts: Mapping[str, str] | None) -> dict[str, Any]:
    """A failed check's regressed queries and condition diff against its reference."""
    label = "target" if result.against == "targets" else "measurement"
    metadata: dict[str, Any] = {
        "conditions_vs_reference": dg.MetadataValue.md(changes_markdown(result.changes_vs_reference, label))
    }
    if result.regressed_metric is not None:
        table = regressed_markdown(result.regressed_metric, result.regressed, texts, label)
        metadata["regressed_queries"] = dg.MetadataValue.md(
            f"Queries whose {result.regressed_metric} dropped most from the {label}:\n\n{table}"
            if result.regressed
            else f"No query's {result.regressed_metric} dropped from the {label}."
        )
        metadata["regressed_query_ids"] = dg.MetadataValue.json(
            {"metric": result.regressed_metric, "queries": result.regressed}
        )
    return metadata


def to_check_result(
    result: CheckResult, severity: dg.AssetCheckSeverity, log: Any = None, texts: Mapping[str, str] | None = None
) -> dg.AssetCheckResult:
    """`texts`: query id -> text, shown beside a failed check's regressed queries."""
    failed = [v for v in result.verdicts if not v["passed"]]
    metadata: dict[str, Any] = {
        "verdicts": dg.MetadataValue.md(_verdict_table(result)),
        "reference": dg.MetadataValue.json(result.reference or {"status": "no target"}),
    }
    for v in result.verdicts:
        if v["value"] is not None:
            metadata[f"{v['metric']}_value"] = float(v["value"])
        if v["reference"] is not None:
            metadata[f"{v['metric']}_target"] = float(v["reference"])
            metadata[f"{v['metric']}_margin"] = float(v["margin"])
        if v["ratio"] is not None:
            metadata[f"{v['metric']}_ratio"] = float(v["ratio"])
        if v.get("delta_interval"):
            metadata[f"{v['metric']}_delta_ci_low"] = float(v["delta_interval"]["low"])
            metadata[f"{v['metric']}_delta_ci_high"] = float(v["delta_interval"]["high"])
    # what an alert needs, in one structured field
    metadata["failed_metrics"] = dg.MetadataValue.json(
        [{k: v[k] for k in ("metric", "value", "reference", "ratio", "margin")} for v in failed]
    )
    if result.key is not None:
        metadata["result_key"] = dg.MetadataValue.json(result.key.as_dict())
    metadata["target_status"] = "no target" if result.no_target else ("fail" if failed else "pass")
    if failed:
        metadata["changes_since_last_pass"] = dg.MetadataValue.json([c.as_dict() for c in result.changes])
        metadata["last_pass"] = result.baseline or "-"
        metadata["diagnosis"] = result.diagnosis or "-"
        metadata.update(_why_metadata(result, texts))
        description = "drift: " + (result.diagnosis or ", ".join(v["metric"] for v in failed))
    elif result.no_target:
        where = f" for {result.key}" if result.key else ""
        what, flag = (
            ("TARGET", "--save-targets") if result.against == "targets" else ("MEASUREMENT", "--save-measurements")
        )
        description = f"NO {what} saved{where}: nothing was checked (passes; save one with {flag})"
        if log is not None:
            log.warning(description)
    else:
        description = f"all {len(result.verdicts)} metrics within margin"
    return dg.AssetCheckResult(passed=not failed, severity=severity, metadata=metadata, description=description)


@dg.asset_check(
    asset=quality_scores,
    partitions_def=eval_partitions,
    blocking=True,
    description="Quality >= 0.99 x the saved target (margins: lib/gates/thresholds.py). Blocking, ERROR.",
)
def quality_vs_target(
    context: dg.AssetCheckExecutionContext,
    quality_scores: dict[str, Any],
    settings: EvalSettings,
) -> dg.AssetCheckResult:
    result = drift_check(context.partition_key, quality_scores, Against.targets, settings)
    texts = query_texts(quality_scores) if result.regressed else None
    return to_check_result(result, dg.AssetCheckSeverity.ERROR, context.log, texts)


@dg.asset_check(
    asset=quality_scores,
    partitions_def=eval_partitions,
    description="Quality >= 0.98 x the latest saved measurement. WARN.",
)
def quality_vs_measurement(
    context: dg.AssetCheckExecutionContext,
    quality_scores: dict[str, Any],
    settings: EvalSettings,
) -> dg.AssetCheckResult:
    result = drift_check(context.partition_key, quality_scores, Against.measurements, settings)
    texts = query_texts(quality_scores) if result.regressed else None
    return to_check_result(result, dg.AssetCheckSeverity.WARN, context.log, texts)


@dg.asset_check(
    asset=perf_scores,
    partitions_def=eval_partitions,
    description="Latency <= 2.5 x the saved target (p50, p99). WARN.",
)
def latency_vs_target(
    context: dg.AssetCheckExecutionContext, perf_scores: dict[str, Any], settings: EvalSettings
) -> dg.AssetCheckResult:
    result = drift_check(context.partition_key, perf_scores, Against.targets, settings, (MetricKind.latency,))
    return to_check_result(result, dg.AssetCheckSeverity.WARN, context.log)


@dg.asset_check(
    asset=perf_scores,
    partitions_def=eval_partitions,
    description="Throughput >= the saved target / 2.5 (items/s, tokens/s). WARN.",
)
def throughput_vs_target(
    context: dg.AssetCheckExecutionContext, perf_scores: dict[str, Any], settings: EvalSettings
) -> dg.AssetCheckResult:
    result = drift_check(context.partition_key, perf_scores, Against.targets, settings, (MetricKind.throughput,))
    return to_check_result(result, dg.AssetCheckSeverity.WARN, context.log)


EVAL_CHECKS = (quality_vs_target, quality_vs_measurement, latency_vs_target, throughput_vs_target)
