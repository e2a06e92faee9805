"""Drift checks against saved results, shared by the CLI (--check-targets/--check-measurements) and
the Dagster asset checks: look up the reference (a target, the latest measurement, published
scores) by its ResultKey, apply the margins of thresholds.py, add paired-bootstrap intervals where
per-item scores exist on both sides, and say what changed in the run conditions since the last
passing result when a check fails. A failed quality check also names the queries that regressed
most against the reference and the run conditions that differ from it (lib/gates/diff.py)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sie_evals.lib.config.model_config import ModelConfig, find_model_config
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.gates.benchmark_scores import published_score
from sie_evals.lib.gates.bootstrap import paired_bootstrap
from sie_evals.lib.gates.conditions import Change, comparable, diagnosis, diff_conditions
from sie_evals.lib.gates.diff import changed_queries, condition_diff
from sie_evals.lib.gates.keys import EvalKey, ResultKey, ResultKind, split_model_part
from sie_evals.lib.gates.saved_results import find_history, find_target, load_per_query
from sie_evals.lib.gates.thresholds import Against, MetricKind, check_against, metric_kind
from sie_evals.lib.perf.load import PERF_TARGET_METRICS
from sie_evals.lib.perf.trials import conditions_change_interval
from sie_evals.lib.tasks import TaskSpec, resolve_task

REGRESSED_QUERIES = 10  # how many of the most regressed queries a failed check names


@dataclass
class ReferenceColumn:
    """A read, not computed, source: published scores, a saved target, a past measurement."""

    source: str
    metrics: dict[str, float]
    per_query: pd.DataFrame | None
    info: dict[str, Any]


@dataclass
class CheckResult:
    against: str  # targets | measurements
    source: str  # the computed source that was checked
    reference: dict[str, Any] | None  # what it was checked against (source, saved, id)
    verdicts: list[dict[str, Any]]
    key: ResultKey | None = None
    changes: list[Change] = field(default_factory=list)  # run conditions: last pass -> this run
    baseline: str | None = None  # which saved result was the last pass
    diagnosis: str | None = None  # one line, set when the check failed
    # set when the check failed: run conditions that differ between the reference and this run, and the
    # queries whose value of `regressed_metric` dropped most from the reference (regressed_queries)
    changes_vs_reference: list[Change] = field(default_factory=list)
    regressed_metric: str | None = None
    regressed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v["passed"] for v in self.verdicts)

    @property
    def no_target(self) -> bool:
        return self.reference is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "against": self.against,
            "source": self.source,
            "key": self.key.as_dict() if self.key else None,
            "reference": self.reference,
            "passed": self.passed,
            "verdicts": self.verdicts,
            "changes_since_last_pass": [c.as_dict() for c in self.changes],
            "last_pass": self.baseline,
            "diagnosis": self.diagnosis,
            "changes_vs_reference": [c.as_dict() for c in self.changes_vs_reference],
            "regressed_metric": self.regressed_metric,
            "regressed_queries": self.regressed,
        }


def reference(source: str, config: ModelConfig, spec: TaskSpec, key: ResultKey) -> ReferenceColumn | None:
    """The reference column for a read source; None when nothing is saved or published for it."""
    if source == "benchmark":
        if key.kind is not ResultKind.quality:
            return None  # MTEB publishes quality only
        found = published_score(
            config.model_id,
            spec.task_id,
            key.split,
            mteb_name=spec.mteb_name,
            hf_subset=spec.hf_subset,
            model_revision=config.revision,
        )
        if found is None:
            return None
        metrics, provenance = found
        note = "published values are for the full split" if key.slice else None
        return ReferenceColumn("benchmark", metrics, None, {**provenance, "note": note})
    if source == "targets":
        entry = find_target(config, key)
        if entry is None:
            return None
        info = {"source": entry.source, "saved": entry.saved, "conditions": entry.conditions}
        return ReferenceColumn("targets", dict(entry.metrics), load_per_query(config, entry), info)
    if source == "measurements":
        history = find_history(config, key)
        if not history:
            return None
        last = history[-1]
        info = {
            "id": last.id,
            "source": last.source,
            "saved": last.saved,
            "history_length": len(history),
            "conditions": last.conditions,
        }
        return ReferenceColumn("measurements", dict(last.metrics), load_per_query(config, last), info)
    raise AssertionError(source)


def last_pass(
    config: ModelConfig, key: ResultKey, against: Against, ref: ReferenceColumn, task: str
) -> tuple[str, dict[str, Any]]:
    """The newest saved result that passed this check: for targets, the latest measurement within the
    target's margins (else the target itself); for measurements, the latest measurement."""
    if against is Against.targets:
        for m in reversed(find_history(config, key)):
            shared = {k: v for k, v in ref.metrics.items() if k in m.metrics}
            verdicts = check_against(m.metrics, shared, against, config.margin_overrides(), task)
            if shared and all(v.passed for v in verdicts):
                return f"measurement {m.id} from {m.source}, {m.saved}", m.conditions
    label = "target" if against is Against.targets else "measurement"
    what = f" {ref.info['id']}" if ref.info.get("id") else ""
    return f"{label}{what} from {ref.info.get('source')}, {ref.info.get('saved')}", ref.info.get("conditions") or {}


def regressed_queries(
    failed: list[dict[str, Any]],
    per_query: pd.DataFrame | None,
    reference_per_query: pd.DataFrame | None,
    n: int = REGRESSED_QUERIES,
) -> tuple[str | None, list[dict[str, Any]]]:
    """The first failed metric that both per-query tables hold, and its `n` most regressed queries
    (reference -> now, most negative delta first, ties by query id); (None, []) without per-query
    scores on both sides (perf, a reference saved without them, a metric with no per-query values)."""
    if per_query is None or reference_per_query is None:
        return None, []
    for verdict in failed:
        metric = verdict["metric"]
        if metric in per_query.columns and metric in reference_per_query.columns:
            moved = changed_queries(reference_per_query, per_query, metric, n)
            rows = moved[moved["direction"] == "regressed"]
            return metric, [
                {
                    "query_id": r.query_id,
                    "reference": float(r.value_a),
                    "value": float(r.value_b),
                    "delta": float(r.delta),
                }
                for r in rows.itertuples(index=False)
            ]
    return None, []


def _unknown_reference_metrics(
    config: ModelConfig, key: ResultKey | None, against: Against, ref: ReferenceColumn, metrics: dict[str, float]
) -> None:
    """A saved metric the run never produces would be checked as "no value" while the real metrics
    go unchecked: that is a broken config, not drift."""
    missing = [m for m in ref.metrics if m not in metrics]
    if missing:
        where = f"{against.value}{key.where()}" if key else against.value
        raise ConfigError(
            f"{config.path}: {where}.metrics: {', '.join(missing)} is not produced by this "
            f"{key.kind.value if key else ''} run (it produces: {', '.join(sorted(metrics)) or 'nothing'}); "
            "fix or re-save the entry"
        )


def check_source(
    source: str,
    metrics: dict[str, float],
    per_query: pd.DataFrame | None,
    against: Against,
    ref: ReferenceColumn | None,
    config: ModelConfig,
    spec: TaskSpec,
    require: bool,
    target_metrics: tuple[str, ...],
    key: ResultKey | None = None,
    conditions: dict[str, Any] | None = None,
) -> CheckResult:
    """Verdicts for one computed source's metrics against a reference (None: nothing saved).
    `conditions` are this run's (lib/gates/conditions.summarize): a failure is diagnosed against the
    last passing result."""
    values = metrics
    if ref is None:  # report what would have been checked, as "no target"
        values = {m: metrics[m] for m in target_metrics if m in metrics}
    elif against in (Against.targets, Against.measurements):
        _unknown_reference_metrics(config, key, against, ref, metrics)
    verdicts = check_against(
        values, ref.metrics if ref else None, against, config.margin_overrides(), spec.task_id, require
    )
    rows = []
    for v in verdicts:
        row = v.as_dict()
        row["delta_interval"] = None
        if ref is not None and ref.per_query is not None and per_query is not None and v.kind == MetricKind.quality:
            interval = paired_bootstrap(per_query, ref.per_query, v.metric)
            row["delta_interval"] = interval.as_dict() if interval else None
        elif ref is not None and key is not None and key.kind is ResultKind.perf:
            # perf: Welch's t over the two runs' trials (lib/perf/trials.py), beside the margin verdict
            row["delta_interval"] = conditions_change_interval(conditions, ref.info.get("conditions"), v.metric)
        rows.append(row)
    info = {k: ref.info.get(k) for k in ("id", "source", "saved")} if ref else None
    result = CheckResult(against.value, source, info, rows, key)
    failed = [r for r in rows if not r["passed"]]
    if failed and ref is not None and key is not None:
        result.baseline, before = last_pass(config, key, against, ref, spec.task_id)
        ok = comparable(before) and comparable(conditions)
        result.changes = diff_conditions(before, conditions, perf=key.kind is ResultKind.perf) if ok else []
        result.diagnosis = diagnosis(failed, result.changes, result.baseline, ok)
        result.changes_vs_reference = condition_diff(ref.info.get("conditions"), conditions)
        result.regressed_metric, result.regressed = regressed_queries(failed, per_query, ref.per_query)
    elif failed:
        result.diagnosis = "no target saved for " + (str(key) if key else "this result") + " (--require-targets)"
    return result


def scores_key(scores: dict[str, Any], config: ModelConfig, spec: TaskSpec) -> ResultKey:
    """The ResultKey of a scores asset's output: quality and perf outputs carry theirs; a Finesse output
    is keyed by model, task and profile alone."""
    if scores.get("result_key"):
        return ResultKey.from_dict(scores["result_key"])
    return ResultKey.finesse(config.short_name, spec.task_id, scores["profile"])


def check_scores(
    key: EvalKey,
    scores: dict[str, Any],
    against: Against,
    kinds: tuple[MetricKind, ...],
    configs_dir: Path | None = None,
) -> CheckResult:
    """Verdicts for the metrics of `kinds` in a scores asset's output (quality_scores, perf_scores,
    finesse_scores) against what is saved under its ResultKey: the one rule behind every Dagster drift
    check. Only the reference metrics of `kinds` are checked; a check of the other kinds covers the rest."""
    config = find_model_config(split_model_part(key.model)[0], configs_dir)
    spec = resolve_task(key.task)
    result_key = scores_key(scores, config, spec)
    ref = reference(against.value, config, spec, result_key)
    if ref is not None:
        wanted = {m: v for m, v in ref.metrics.items() if metric_kind(m) in kinds}
        ref = ReferenceColumn(ref.source, wanted, ref.per_query, ref.info) if wanted else None
    path = scores.get("per_query_path")  # quality outputs only: perf and Finesse have no per-query scores
    per_query = pd.read_parquet(path) if path and Path(path).is_file() else None
    target_metrics = PERF_TARGET_METRICS if result_key.kind is ResultKind.perf else spec.rules.target_metrics
    return check_source(
        key.source,
        {m: v for m, v in scores["metrics"].items() if metric_kind(m) in kinds},
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
