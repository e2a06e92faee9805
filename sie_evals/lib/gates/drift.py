"""Drift checks against saved results, shared by the CLI (--check-targets/--check-measurements) and
the Dagster asset checks: look up the reference (a target, the latest measurement, published
scores), apply the margins of thresholds.py, and add paired-bootstrap intervals where per-item
scores exist on both sides."""

from dataclasses import dataclass
from typing import Any

import pandas as pd

from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.gates.benchmark_scores import published_score
from sie_evals.lib.gates.bootstrap import paired_bootstrap
from sie_evals.lib.gates.saved_results import load_per_query
from sie_evals.lib.gates.thresholds import Against, MetricKind, check_against
from sie_evals.lib.tasks import TaskSpec


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

    @property
    def passed(self) -> bool:
        return all(v["passed"] for v in self.verdicts)


def reference(
    source: str, config: ModelConfig, spec: TaskSpec, profile: str, variant: str, split: str, subset: bool = False
) -> ReferenceColumn | None:
    """The reference column for a read source; None when nothing is saved or published for it."""
    if source == "benchmark":
        if variant.startswith("perf@"):
            return None  # MTEB publishes quality only
        found = published_score(
            config.model_id,
            spec.task_id,
            split,
            mteb_name=spec.mteb_name,
            hf_subset=spec.hf_subset,
            model_revision=config.revision,
        )
        if found is None:
            return None
        metrics, provenance = found
        note = "published values are for the full split" if subset else None
        return ReferenceColumn("benchmark", metrics, None, {**provenance, "note": note})
    if source == "targets":
        entry = config.target(spec.task_id, profile, variant)
        if entry is None:
            return None
        info = {"source": entry.source, "saved": entry.saved, "conditions": entry.conditions}
        return ReferenceColumn("targets", dict(entry.metrics), load_per_query(config, entry), info)
    if source == "measurements":
        history = config.measurement_history(spec.task_id, profile, variant)
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
) -> CheckResult:
    """Verdicts for one computed source's metrics against a reference (None: nothing saved)."""
    values = metrics
    if ref is None:  # report what would have been checked, as "no target"
        values = {m: metrics[m] for m in target_metrics if m in metrics}
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
        rows.append(row)
    info = {k: ref.info.get(k) for k in ("id", "source", "saved")} if ref else None
    return CheckResult(against.value, source, info, rows)
