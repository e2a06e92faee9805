"""Per-partition drift checks on the scores assets, all from one factory (`drift_check_spec`) over the
same code as --check-targets and --check-measurements (lib/gates/drift.py `check_scores`, margins in
lib/gates/thresholds.py). Each check's description is generated from the default margins, and each
result names the margins it applied (a model config's `margins:` overrides them).

- quality_vs_target: blocking, ERROR. A failure fails the run, so nothing downstream of the scores
  runs on a drifted model.
- quality_vs_measurement: non-blocking, WARN, against the latest saved measurement.
- latency_vs_target / throughput_vs_target on perf_scores: non-blocking, WARN: perf on shared
  hardware is noisy, so it alerts, not blocks.
- finesse_rss_vs_target / finesse_rss_vs_measurement (defs/finesse/checks.py): as the quality pair.
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

from sie_evals.defs.evals.assets import perf_scores, quality_scores
from sie_evals.defs.evals.partitions import eval_key
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.lib.gates.drift import CheckResult, check_scores
from sie_evals.lib.gates.thresholds import Against, MetricKind, default_margin_rules, margin_rule, metric_kind
from sie_evals.lib.reporting.regressions import changes_markdown, regressed_markdown
from sie_evals.lib.tasks.snapshot import read_snapshot


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
        applied = "; ".join(
            margin_rule(v["metric"], metric_kind(v["metric"]), Against(result.against), v["margin"])
            for v in result.verdicts
        )
        description = f"all {len(result.verdicts)} metrics within margin ({applied})"
    return dg.AssetCheckResult(passed=not failed, severity=severity, metadata=metadata, description=description)


def check_description(against: Against, kinds: tuple[MetricKind, ...], blocking: bool, subject: str = "") -> str:
    """Generated from the default margins (lib/gates/thresholds.py), never restated by hand."""
    mode = "Blocking, ERROR" if blocking else "Non-blocking, WARN"
    return (
        f"{subject}{default_margin_rules(against, kinds)} (default margins; a model config's `margins:` "
        f"overrides them, and each result names the margins it applied). {mode}."
    )


def drift_check_spec(
    asset: dg.AssetsDefinition,
    name: str,
    against: Against,
    kinds: tuple[MetricKind, ...] = (MetricKind.quality,),
    blocking: bool = False,
    subject: str = "",
) -> dg.AssetChecksDefinition:
    """A per-partition drift check of `asset`'s metrics of `kinds` against the saved targets or the latest
    measurement. Blocking checks are ERROR (a failure fails the run); the others WARN. `subject` prefixes
    the description (e.g. which metric a Finesse task is checked on)."""
    severity = dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN

    @dg.asset_check(
        asset=asset,
        name=name,
        partitions_def=asset.partitions_def,
        blocking=blocking,
        description=check_description(against, kinds, blocking, subject),
    )
    def _check(
        context: dg.AssetCheckExecutionContext, scores: dict[str, Any], settings: EvalSettings
    ) -> dg.AssetCheckResult:
        key = eval_key(context.partition_key)  # eval and Finesse cells alike: `model:task:source`
        scores = settings.local_outputs(scores)  # its per-query table and snapshot, fetched from the shared store
        result = check_scores(key, scores, against, kinds, settings.configs_dir())
        texts = query_texts(scores) if result.regressed else None
        return to_check_result(result, severity, context.log, texts)

    return _check


quality_vs_target = drift_check_spec(quality_scores, "quality_vs_target", Against.targets, blocking=True)
quality_vs_measurement = drift_check_spec(quality_scores, "quality_vs_measurement", Against.measurements)
latency_vs_target = drift_check_spec(perf_scores, "latency_vs_target", Against.targets, (MetricKind.latency,))
throughput_vs_target = drift_check_spec(perf_scores, "throughput_vs_target", Against.targets, (MetricKind.throughput,))

EVAL_CHECKS = (quality_vs_target, quality_vs_measurement, latency_vs_target, throughput_vs_target)
