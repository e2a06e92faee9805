"""Drift rules: which metrics exist, which direction is better, and the margins a value must stay
within. The one place these rules live: the CLI's --check-targets/--check-measurements and the
Dagster asset checks both call `check_against`.

Margins (defaults; overridable per model, task or metric in the model config's `margins:`):
- against targets:      quality >= 0.99 x target; latency <= 2.5 x target; throughput >= target / 2.5
- against measurements: quality >= 0.98 x last;   latency <= 1.5 x last;   throughput >= last / 1.5
  (our own history on comparable hardware, so a tighter perf band than the cross-machine target's)
"""

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from sie_evals.lib.core.metric_names import MetricKind, metric_kind


class Against(StrEnum):
    targets = "targets"
    measurements = "measurements"


DEFAULT_MARGINS: dict[Against, dict[MetricKind, float]] = {
    Against.targets: {MetricKind.quality: 0.99, MetricKind.latency: 2.5, MetricKind.throughput: 2.5},
    Against.measurements: {MetricKind.quality: 0.98, MetricKind.latency: 1.5, MetricKind.throughput: 1.5},
}


def resolve_margin(
    metric: str, against: Against, overrides: dict[str, Any] | None = None, task: str | None = None
) -> float:
    """Most specific wins: per metric, then per task (by kind), then per model (by kind), then default.

    `overrides` is the model config's `margins:` block:
        {targets: {quality: 0.995}, measurements: {...},
         tasks: {beir/SciFact: {targets: {quality: 0.98}}},
         metrics: {ndcg_at_10: {targets: 0.995}}}"""
    kind = metric_kind(metric)
    if kind is None:
        raise ValueError(f"unknown metric {metric!r}")
    o = overrides or {}
    per_metric = (o.get("metrics") or {}).get(metric) or {}
    if per_metric.get(against.value) is not None:
        return float(per_metric[against.value])
    per_task = ((o.get("tasks") or {}).get(task) or {}).get(against.value) or {}
    if per_task.get(kind.value) is not None:
        return float(per_task[kind.value])
    per_model = o.get(against.value) or {}
    if per_model.get(kind.value) is not None:
        return float(per_model[kind.value])
    return DEFAULT_MARGINS[against][kind]


@dataclass(frozen=True)
class Verdict:
    metric: str
    kind: str
    value: float | None
    reference: float | None  # the target or measurement
    ratio: float | None  # value / reference
    margin: float
    bound: float | None  # the value the metric must not cross
    status: str  # "pass", "fail", "no target", "no value"
    passed: bool  # what the gate uses (a missing target passes unless required)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_value(
    metric: str, value: float | None, reference: float | None, margin: float, require_reference: bool = False
) -> Verdict:
    kind = metric_kind(metric)
    if kind is None:
        raise ValueError(f"unknown metric {metric!r}")
    if reference is None:
        return Verdict(metric, kind, value, None, None, margin, None, "no target", not require_reference)
    if value is None or not math.isfinite(value):
        return Verdict(metric, kind, value, reference, None, margin, None, "no value", False)
    ratio = value / reference if reference else math.inf
    if kind is MetricKind.quality:
        # the allowed drop is a fraction of |reference|: margin x reference would sit above a negative
        # reference (Finesse SRS, a negative correlation), failing a run that matches it exactly
        bound = reference - (1 - margin) * abs(reference)
        ok = value >= bound
    elif kind is MetricKind.latency:
        bound = margin * reference
        ok = value <= bound
    else:
        bound = reference / margin
        ok = value >= bound
    return Verdict(metric, kind, value, reference, ratio, margin, bound, "pass" if ok else "fail", ok)


def check_against(
    values: dict[str, float],
    reference: dict[str, float] | None,
    against: Against,
    overrides: dict[str, Any] | None = None,
    task: str | None = None,
    require_reference: bool = False,
) -> list[Verdict]:
    """One verdict per metric that has a reference (every reference metric is checked), plus a
    "no target" row for each produced metric of the same kinds when there is no reference at all."""
    if not reference:
        names = [m for m in values if metric_kind(m) is not None]
        return [
            check_value(m, values.get(m), None, resolve_margin(m, against, overrides, task), require_reference)
            for m in names
        ]
    return [
        check_value(m, values.get(m), ref, resolve_margin(m, against, overrides, task), require_reference)
        for m, ref in reference.items()
    ]


REFERENCE_LABEL = {Against.targets: "the saved target", Against.measurements: "the latest saved measurement"}


def margin_rule(name: str, kind: MetricKind, against: Against, margin: float) -> str:
    """One margin as the bound `check_value` applies, in words: "quality >= 0.99 x the saved target"."""
    ref = REFERENCE_LABEL[against]
    if kind is MetricKind.quality:
        return f"{name} >= {margin:g} x {ref}"
    if kind is MetricKind.latency:
        return f"{name} <= {margin:g} x {ref}"
    return f"{name} >= {ref} / {margin:g}"


def default_margin_rules(against: Against, kinds: tuple[MetricKind, ...]) -> str:
    """The default margins of `kinds` in words, generated from DEFAULT_MARGINS so no help text or check
    description restates a number that can drift from the one applied."""
    return "; ".join(margin_rule(kind.value, kind, against, DEFAULT_MARGINS[against][kind]) for kind in kinds)
