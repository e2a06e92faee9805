"""The metric vocabulary: every metric name sie-evals reports, and which direction is better.

One place: config validation (targets, margins), the drift gates, the per-task target vocabulary
(lib/gates/target_metrics.py), the SLO names (lib/perf/sweep.py), the latency summaries
(lib/perf/histogram.py) and the report's perf rows (lib/harness/report.py) all derive from the
names here, so a metric added here is reported, targetable and gateable at once (and one reported
but missing here fails sie_evals_tests/test_metric_vocabulary.py). It sits below all of them."""

import re
from enum import StrEnum


class MetricKind(StrEnum):
    """How a metric is gated. `latency` is every lower-is-better metric (times, errors, drops)."""

    quality = "quality"  # higher is better, margin is a fraction (value >= margin x reference)
    latency = "latency"  # lower is better, margin is a factor (value <= margin x reference)
    throughput = "throughput"  # higher is better, margin is a factor (value >= reference / margin)


# ---------------------------------------------------------------- quality, by task type (the scorers' names)
RETRIEVAL_PREFIXES = ("ndcg", "map", "recall", "precision", "hit_rate", "mrr")  # each `_at_<k>`
CLASSIFICATION_METRICS = (
    "accuracy", "f1", "f1_weighted", "precision", "precision_weighted", "recall", "recall_weighted",
    "ap", "ap_weighted",  # binary label sets only
)  # fmt: skip
# classification also reports each of its experiments' accuracy (lib/quality/scoring.py)
CLASSIFICATION_EXPERIMENT_SHAPE = r"experiment_[0-9]+_accuracy"
PAIR_SIMILARITIES = ("similarity", "cosine", "manhattan", "euclidean", "dot", "max")
PAIR_SCORES = ("accuracy", "f1", "precision", "recall", "ap")
PAIR_CLASSIFICATION_METRICS = tuple(f"{s}_{m}" for s in PAIR_SIMILARITIES for m in PAIR_SCORES)
# Reported beside the scores, but not scores: the decision threshold each pair classification score
# was taken at. Neither higher nor lower is better, so no target or margin can hold one.
PAIR_THRESHOLDS = tuple(f"{s}_{m}_threshold" for s in PAIR_SIMILARITIES if s != "max" for m in ("accuracy", "f1"))
STS_METRICS = tuple(f"{p}{c}" for p in ("", "cosine_", "manhattan_", "euclidean_") for c in ("pearson", "spearman"))
# Finesse (sie_evals/finesse), by the task's main score (finesse/rss-* or finesse/srs-*). The SRS position
# bias index is a spread of scores across positions, so lower is better (gated like latency).
FINESSE_METRICS = {"average_rss": ("average_rss",), "average_srs": ("average_srs", "average_pbi")}
_LOWER_IS_BETTER_QUALITY = ("average_pbi",)


def retrieval_metrics(k_values: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"{p}_at_{k}" for p in RETRIEVAL_PREFIXES for k in k_values)


RETRIEVAL_SHAPE = rf"({'|'.join(RETRIEVAL_PREFIXES)})_at_[0-9]+"  # any k (mteb's tasks choose their own)

# ---------------------------------------------------------------- perf
# Latency summaries (HdrHistogram percentiles, no interpolation; lib/perf/histogram.py) and their names.
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99.9": 99.9}
LATENCY_STATS = (*PERCENTILES, "min", "max", "mean")


def time_metric(series: str, stat: str) -> str:
    """`latency` + `p99.9` -> `latency_p99.9_ms`: the one naming rule of every time metric."""
    return f"{series}_{stat}_ms"


# Series of request times: client latency (open loop: from the scheduled send), service time (open
# loop: from the actual send), send lag, the server's own timings (SIE's `timing`: server_total, ...),
# what client and network add, and the load generator's own cost (lib/perf/overhead.py).
TIME_SERIES = r"latency|service|send_lag|server_[a-z_]+|client_overhead|generator_overhead(_send_lag)?"
_TIME = re.compile(rf"^({TIME_SERIES})_({'|'.join(re.escape(s) for s in LATENCY_STATS)})_ms$")
PERF_HIGHER_IS_BETTER = (
    "items_per_s", "tokens_per_s", "requests_per_s", "goodput_per_s", "offered_rate_per_s",
    "max_rate_at_slo", "max_concurrency_at_slo", "completed", "scheduled", "slo_met",
)  # fmt: skip
PERF_LOWER_IS_BETTER = ("errors", "error_rate", "late", "dropped", "dropped_at_end")
# SLOs (`--slo p99_ms<=250`): request latency statistics and the error rate.
SLO_METRICS = {
    **{f"{s}_ms": time_metric("latency", s) for s in (*PERCENTILES, "mean", "max")},
    "error_rate": "error_rate",
}
# What --save-targets stores for perf and --check-targets gates on by default.
PERF_TARGET_METRICS = ("latency_p50_ms", "latency_p99_ms", "items_per_s", "tokens_per_s")
# The perf rows of the eval table and the Dagster metadata (lib/harness/report.py), in order.
PERF_TABLE_METRICS = (
    *(time_metric("latency", s) for s in (*PERCENTILES, "min", "max", "mean")),
    "items_per_s", "tokens_per_s", "requests_per_s",
    # open loop: the offered rate, what came back, and the time from the actual send
    "offered_rate_per_s", "completed", "errors", "late", "dropped",
    "service_p50_ms", "service_p99_ms", "send_lag_p99_ms",
    "goodput_per_s", "max_rate_at_slo", "max_concurrency_at_slo",
    # where the engine reports its own time (SIE's `timing`): the server's share and the client's
    "server_total_p50_ms", "server_inference_p50_ms", "server_queue_p50_ms", "client_overhead_p50_ms",
)  # fmt: skip

_QUALITY_PATTERNS = (
    re.compile(rf"^{RETRIEVAL_SHAPE}$"),
    re.compile(rf"^({'|'.join(CLASSIFICATION_METRICS)})$"),
    re.compile(rf"^{CLASSIFICATION_EXPERIMENT_SHAPE}$"),
    re.compile(rf"^({'|'.join(PAIR_CLASSIFICATION_METRICS)})$"),
    re.compile(rf"^({'|'.join(STS_METRICS)})$"),
    # MTEB's own evaluators (--backend mteb) name a few more of the same families
    re.compile(r"^(accuracy|f1|precision|recall|ap)(_weighted)?$"),
    re.compile(rf"^({'|'.join(PAIR_SIMILARITIES)})_(pearson|spearman)$"),
    re.compile(
        rf"^({'|'.join(m for ms in FINESSE_METRICS.values() for m in ms if m not in _LOWER_IS_BETTER_QUALITY)})$"
    ),
)


def metric_kind(name: str) -> MetricKind | None:
    """The kind of a metric name, or None when sie-evals reports no metric of that name."""
    if any(p.match(name) for p in _QUALITY_PATTERNS):
        return MetricKind.quality
    if _TIME.match(name) or name in PERF_LOWER_IS_BETTER or name in _LOWER_IS_BETTER_QUALITY:
        return MetricKind.latency
    if name in PERF_HIGHER_IS_BETTER:
        return MetricKind.throughput
    return None


def is_perf_metric(name: str) -> bool:
    """Whether a perf run reports this name (perf targets may hold any of them)."""
    return bool(_TIME.match(name)) or name in PERF_LOWER_IS_BETTER or name in PERF_HIGHER_IS_BETTER


def is_diagnostic(name: str) -> bool:
    """A reported number that is not a metric to gate (a pair classification threshold)."""
    return name in PAIR_THRESHOLDS
