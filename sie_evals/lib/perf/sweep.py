"""Sweeps, SLOs and goodput: one load point per value of one parameter, and the highest rate (or
concurrency) that meets every SLO, searched between the sweep points (vLLM's `sweep serve_sla`).

An SLO is `<metric><op><threshold>` with metric one of p50_ms, p90_ms, p95_ms, p99_ms, p99.9_ms,
mean_ms, max_ms (request latency, open loop from the scheduled send), error_rate; op <= or <, >=, >.
Goodput (vLLM's definition) counts the requests that meet every per-request SLO, per second: a latency
SLO, whatever its statistic, is met by a request whose own latency is within the threshold."""

import dataclasses
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.metric_names import SLO_METRICS  # the SLO names come from the metric vocabulary
from sie_evals.lib.perf.load import LoadSpec, LoadSpecError

SWEEP_PARAMS = {"concurrency": int, "rate": float, "batch": int, "tokens": int}
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_SLO_RE = re.compile(r"^\s*([a-z0-9_.]+)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Sweep:
    param: str
    values: tuple[float, ...]

    def spec_at(self, base: LoadSpec, value: float) -> LoadSpec:
        """The base load with this point's value. A concurrency sweep is closed-loop; a rate sweep open."""
        try:
            if self.param == "concurrency":
                return dataclasses.replace(base, concurrency=int(value), rate=None)
            if self.param == "rate":
                return dataclasses.replace(base, rate=float(value))
            if self.param == "batch":
                return dataclasses.replace(base, batch_size=int(value))
            return dataclasses.replace(base, tokens=int(value))
        except LoadSpecError as err:
            raise InputError(f"--sweep {self.param}={value:g}: {err}") from None

    @property
    def searchable(self) -> bool:
        return self.param in ("concurrency", "rate")


def parse_sweep(text: str) -> Sweep:
    """`concurrency=1,2,4,8` -> Sweep; InputError naming --sweep on anything else."""
    name, eq, values = text.partition("=")
    name = name.strip()
    if not eq or name not in SWEEP_PARAMS:
        raise InputError(f"--sweep {text!r}: expected PARAM=V1,V2,... with PARAM one of {', '.join(SWEEP_PARAMS)}")
    kind = SWEEP_PARAMS[name]
    parsed = []
    for raw in values.split(","):
        try:
            v = kind(raw.strip())
        except ValueError:
            raise InputError(f"--sweep {name}: {raw.strip()!r} is not a {kind.__name__}") from None
        if not (v > 0 and math.isfinite(v)):
            raise InputError(f"--sweep {name}: values must be > 0, got {raw.strip()}")
        parsed.append(v)
    if len(set(parsed)) != len(parsed):
        raise InputError(f"--sweep {name}: a value is listed twice")
    return Sweep(name, tuple(sorted(parsed)))


@dataclass(frozen=True)
class Slo:
    metric: str  # as the user wrote it, e.g. p99_ms
    op: str
    threshold: float

    @property
    def key(self) -> str:
        return SLO_METRICS[self.metric]

    def met(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.key)
        return value is not None and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def parse_slo(text: str) -> Slo:
    m = _SLO_RE.match(text)
    if not m:
        raise InputError(f"--slo {text!r}: expected METRIC<=VALUE, e.g. p99_ms<=250")
    metric, op, raw = m.groups()
    if metric not in SLO_METRICS:
        raise InputError(f"--slo {text!r}: unknown metric {metric!r}; valid: {', '.join(SLO_METRICS)}")
    try:
        threshold = float(raw)
    except ValueError:
        raise InputError(f"--slo {text!r}: {raw!r} is not a number") from None
    if not math.isfinite(threshold) or threshold < 0:
        raise InputError(f"--slo {text!r}: the threshold must be a finite number >= 0")
    if metric != "error_rate" and op in (">=", ">"):
        raise InputError(f"--slo {text!r}: a latency SLO is an upper bound (use <= or <)")
    return Slo(metric, op, threshold)


def with_error_rate(metrics: dict[str, float]) -> dict[str, float]:
    total = metrics.get("completed", 0.0) + metrics.get("errors", 0.0) + metrics.get("dropped", 0.0)
    return {**metrics, "error_rate": (total - metrics.get("completed", 0.0)) / total if total else 1.0}


def goodput(latencies_ms: np.ndarray, duration_s: float, slos: Sequence[Slo]) -> float:
    """Requests per second whose own latency meets every latency SLO (failed/dropped ones never do)."""
    if duration_s <= 0:
        return 0.0
    good = np.ones(len(latencies_ms), dtype=bool)
    for slo in slos:
        if slo.metric != "error_rate":
            good &= _OPS[slo.op](latencies_ms, slo.threshold)
    return float(good.sum() / duration_s)


def search_max_at_slo(
    points: list[tuple[float, dict[str, float]]],
    slos: Sequence[Slo],
    probe: Callable[[float], dict[str, float]],
    param: str,
    steps: int = 3,
) -> dict[str, Any]:
    """Highest value of `param` meeting every SLO. The sweep points bracket it (the last passing point
    below the first failing one); up to `steps` extra probes bisect the bracket (integers for
    concurrency). Returns the value, the probes run, and whether it was bracketed (if the top point
    passes, the answer is only a lower bound)."""
    pts = sorted(points)
    passed = [all(s.met(m) for s in slos) for _, m in pts]
    probes: list[tuple[float, dict[str, float]]] = []
    if not passed or not passed[0]:  # even the lightest load misses an SLO
        return {
            "value": None,
            "metrics": None,
            "bracketed": bool(passed),
            "upper": pts[0][0] if pts else None,
            "probes": probes,
        }
    i = 0  # the knee: the last point of the passing run from the bottom (a later pass is noise past it)
    while i + 1 < len(pts) and passed[i + 1]:
        i += 1
    lo, lo_m = pts[i]
    hi = pts[i + 1][0] if i + 1 < len(pts) else None
    if hi is not None:
        for _ in range(steps):
            mid = (lo + hi) / 2 if param == "rate" else float((int(lo) + int(hi)) // 2)
            if mid <= lo or mid >= hi:
                break
            m = probe(mid)
            probes.append((mid, m))
            if all(s.met(m) for s in slos):
                lo, lo_m = mid, m
            else:
                hi = mid
    return {"value": lo, "metrics": lo_m, "bracketed": hi is not None, "upper": hi, "probes": probes}
