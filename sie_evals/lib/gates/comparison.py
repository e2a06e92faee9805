"""One partition's results side by side with every reference: published benchmark, saved target and
the latest measurement (the `target_comparison` asset and its markdown table).

Verdicts come from drift.check_source, so the margins are the ones --check-targets and
--check-measurements apply."""

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.gates.drift import CheckResult, check_source, reference
from sie_evals.lib.gates.keys import ResultKey
from sie_evals.lib.gates.thresholds import Against, metric_kind
from sie_evals.lib.tasks import TaskSpec


@dataclass
class Comparison:
    key: str
    rows: list[dict[str, Any]]  # one per metric
    checks: dict[str, CheckResult] = field(default_factory=dict)  # targets / measurements
    warnings: list[str] = field(default_factory=list)  # e.g. a benchmark score for another model revision

    def worst_ratio(self, against: str) -> float | None:
        """The ratio closest to failing (lowest for quality/throughput, highest for latency), as a
        number the UI can plot over time."""
        pairs = [(row["metric"], row.get(f"{against}_ratio")) for row in self.rows]
        # latency ratios fail upwards: compare them inverted
        normalised = [(1 / r if metric_kind(m) == "latency" else r, r) for m, r in pairs if r]
        return min(normalised)[1] if normalised else None


def compare(
    label: str,
    source: str,
    metrics: dict[str, float],
    per_item: pd.DataFrame | None,
    config: ModelConfig,
    spec: TaskSpec,
    key: ResultKey,
    target_metrics: tuple[str, ...],
    conditions: dict[str, Any] | None = None,
) -> Comparison:
    """Rows for `target_metrics` (plus any metric a reference holds) against every reference."""
    bench = reference("benchmark", config, spec, key)
    checks = {
        against.value: check_source(
            source,
            metrics,
            per_item,
            against,
            reference(against.value, config, spec, key),
            config,
            spec,
            False,
            target_metrics,
            key,
            conditions,
        )
        for against in (Against.targets, Against.measurements)
    }
    names = list(dict.fromkeys([*(m for m in target_metrics if m in metrics), *_verdict_metrics(checks)]))
    rows = []
    for name in names:
        row: dict[str, Any] = {"metric": name, "value": metrics.get(name)}
        bench_value = bench.metrics.get(name) if bench else None
        row["benchmark"] = bench_value
        row["benchmark_ratio"] = metrics[name] / bench_value if bench_value and metrics.get(name) is not None else None
        for against, result in checks.items():
            verdict = next((v for v in result.verdicts if v["metric"] == name), None)
            row[against] = verdict["reference"] if verdict else None
            row[f"{against}_ratio"] = verdict["ratio"] if verdict else None
            row[f"{against}_margin"] = verdict["margin"] if verdict else None
            row[f"{against}_status"] = verdict["status"] if verdict else "no target"
        rows.append(row)
    warnings = [f"benchmark: {bench.info['warning']}"] if bench and bench.info.get("warning") else []
    return Comparison(label, rows, checks, warnings)


def _verdict_metrics(checks: dict[str, CheckResult]) -> list[str]:
    return [v["metric"] for c in checks.values() for v in c.verdicts if v["reference"] is not None]


def _num(x: float | None, digits: int = 5) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def comparison_markdown(comparison: Comparison) -> str:
    lines = [
        f"### {comparison.key}",
        "",
        "| metric | value | benchmark | target | ratio | verdict | last measurement | ratio | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison.rows:
        lines.append(
            f"| {r['metric']} | {_num(r['value'])} | {_num(r['benchmark'])} | {_num(r['targets'])} "
            f"| {_num(r['targets_ratio'], 4)} | {r['targets_status']} | {_num(r['measurements'])} "
            f"| {_num(r['measurements_ratio'], 4)} | {r['measurements_status']} |"
        )
    lines += [f"\n**warning:** {w}" for w in comparison.warnings]
    for against, check in comparison.checks.items():
        if check.no_target:
            lines.append(f"\n**no {against[:-1]} saved** for {check.key or comparison.key}: nothing is checked.")
        elif check.diagnosis:
            lines.append(f"\n**{against} failed:** {check.diagnosis}")
    return "\n".join(lines) + "\n"
