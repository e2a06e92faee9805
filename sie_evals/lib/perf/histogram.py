"""Latency histograms: HdrHistogram (the wrk2 / k6 / Gil Tene format), microsecond units, 3 significant
digits (every recorded value is kept to within 0.1%), 1 us to 1 hour. The encoded histogram goes into
the report, so any percentile can be recomputed later, and histograms of trials or runs merge exactly."""

from collections.abc import Iterable

import numpy as np
from hdrh.histogram import HdrHistogram

from sie_evals.lib.core import metric_names

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
# Reported percentiles, name -> percentile: the metric vocabulary's one list
PERCENTILES = metric_names.PERCENTILES


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def histogram_of(latencies_ms: Iterable[float]) -> HdrHistogram:
    hist = new_histogram()
    values = latencies_ms if isinstance(latencies_ms, np.ndarray) else list(latencies_ms)
    us = np.clip(np.round(np.asarray(values, dtype=float) * 1000.0), LOWEST_US, HIGHEST_US).astype(np.int64)
    # each distinct microsecond once, with its count: a run of 10^6 requests has a few thousand
    for v, n in zip(*np.unique(us, return_counts=True), strict=True):
        hist.record_value(int(v), int(n))
    return hist


def encode(hist: HdrHistogram) -> str:
    """The standard compressed, base64 HdrHistogram encoding (readable by every HdrHistogram port)."""
    return hist.encode().decode("ascii")


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


def merged(hists: Iterable[HdrHistogram]) -> HdrHistogram:
    out = new_histogram()
    for h in hists:
        out.add(h)
    return out


def summary(hist: HdrHistogram, prefix: str = "latency") -> dict[str, float]:
    """p50/p90/p95/p99/p99.9/min/max/mean in ms. Percentiles are HdrHistogram's: the value at rank
    ceil(p/100 * n), no interpolation, so a single outlier among more than 100 requests is above p99."""
    if hist.get_total_count() == 0:
        return {}
    out = {f"{prefix}_{name}_ms": hist.get_value_at_percentile(p) / 1000.0 for name, p in PERCENTILES.items()}
    out[f"{prefix}_min_ms"] = hist.get_min_value() / 1000.0
    out[f"{prefix}_max_ms"] = hist.get_max_value() / 1000.0
    out[f"{prefix}_mean_ms"] = hist.get_mean_value() / 1000.0
    return out
