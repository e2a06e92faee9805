"""The metric vocabulary: every metric name sie-evals produces and which direction is better.
Config validation and the drift gates both read it, so it sits below both."""

import re
from enum import StrEnum


class MetricKind(StrEnum):
    quality = "quality"  # higher is better, margin is a fraction (value >= margin x reference)
    latency = "latency"  # lower is better, margin is a factor (value <= margin x reference)
    throughput = "throughput"  # higher is better, margin is a factor (value >= reference / margin)


_QUALITY_PATTERNS = (
    re.compile(r"^(ndcg|map|recall|precision|hit_rate|mrr)_at_\d+$"),
    re.compile(r"^(accuracy|f1|precision|recall|ap)(_weighted)?$"),
    re.compile(r"^(cosine|euclidean|manhattan|dot|similarity|max)_(accuracy|f1|precision|recall|ap|pearson|spearman)$"),
    re.compile(r"^(pearson|spearman)$"),
    re.compile(r"^average_(rss|srs)$"),  # Finesse (sie_evals/finesse)
)
_LATENCY = re.compile(r"^latency_(p50|p90|p95|p99|p99\.9|min|max|mean)_ms$")
# Finesse SRS position bias index: a spread of scores across positions, so lower is better (gated like latency).
_LOWER_IS_BETTER = ("average_pbi",)
_THROUGHPUT = re.compile(r"^(items|tokens|requests)_per_s$")


def metric_kind(name: str) -> MetricKind | None:
    """The kind of a metric name, or None when sie-evals produces no metric of that name."""
    if any(p.match(name) for p in _QUALITY_PATTERNS):
        return MetricKind.quality
    if _LATENCY.match(name) or name in _LOWER_IS_BETTER:
        return MetricKind.latency
    if _THROUGHPUT.match(name):
        return MetricKind.throughput
    return None
