"""Statistics across repeated perf trials, as NVIDIA AIPerf reports them: per metric the mean over
trials and a 95% confidence interval from Student's t (n - 1 degrees of freedom), and, for a check
against a saved perf result, whether a change is beyond that noise: Welch's t interval of the
difference of the two runs' trial means (unequal variances), beyond noise when it excludes 0. A
saved perf result keeps each trial's value of these metrics in its run conditions (`trial_values`):
a few numbers, where the per-request rows would be thousands."""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
CI_METRICS = ("latency_p50_ms", "latency_p99_ms", "requests_per_s", "items_per_s", "tokens_per_s")


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float] | None:
    """Mean and its confidence interval over trials (None with fewer than 2 trials)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return None
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return {"mean": mean, "low": mean - half, "high": mean + half, "stdev": sd, "n": len(x), "confidence": confidence}


def trial_intervals(per_trial: Sequence[dict[str, float]], metrics: Sequence[str] = CI_METRICS) -> dict[str, Any]:
    """{metric: t_interval} over the trials' metrics, for the metrics every trial has."""
    out = {}
    for name in metrics:
        values = [m[name] for m in per_trial if name in m]
        if len(values) == len(per_trial) and (ci := t_interval(values)) is not None:
            out[name] = ci
    return out


def change_interval(
    current: Sequence[float], reference: Sequence[float], metric: str, confidence: float = CONFIDENCE
) -> dict[str, Any] | None:
    """Welch's t interval of mean(current) - mean(reference) over trials; None unless each side has
    at least 2 trials. Same keys as the quality checks' paired bootstrap (gates/bootstrap.py)."""
    c, r = np.asarray(current, dtype=float), np.asarray(reference, dtype=float)
    if len(c) < 2 or len(r) < 2:
        return None
    delta = float(c.mean() - r.mean())
    vc, vr = c.var(ddof=1) / len(c), r.var(ddof=1) / len(r)
    se = math.sqrt(vc + vr)
    if se == 0:
        low = high = delta
    else:
        df = (vc + vr) ** 2 / ((vc**2 / (len(c) - 1) if vc else 0.0) + (vr**2 / (len(r) - 1) if vr else 0.0))
        half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
        low, high = delta - half, delta + half
    return {
        "metric": metric,
        "delta": delta,
        "low": float(low),
        "high": float(high),
        "n": int(min(len(c), len(r))),
        "confidence": confidence,
        "method": "welch-t over trials",
        "beyond_noise": bool(low > 0 or high < 0),
    }


def trial_values(per_trial: Sequence[dict[str, float]], metrics: Sequence[str] = CI_METRICS) -> dict[str, list]:
    """{metric: [value of each trial]}: what a saved perf result keeps (in its run conditions) so a
    later check can tell a change from the trials' noise."""
    return {m: [float(t[m]) for t in per_trial] for m in metrics if all(m in t for t in per_trial)}


def conditions_change_interval(
    current: dict[str, Any] | None, reference: dict[str, Any] | None, metric: str
) -> dict[str, Any] | None:
    """change_interval of a metric between two runs from their conditions' `trial_values` (None when
    either lacks them, e.g. a result saved before they were recorded)."""
    c = ((current or {}).get("trial_values") or {}).get(metric)
    r = ((reference or {}).get("trial_values") or {}).get(metric)
    if not c or not r:
        return None
    return change_interval(c, r, metric)
