"""Paired bootstrap over queries: is a metric change between two runs beyond noise?

Both runs are scored on the same queries; resampling query ids with replacement (the same sample
for both runs) gives a distribution of the mean difference. A 95% interval that excludes 0 says the
change is beyond what re-drawing the query set would explain. The margin rule stays the gate; this
only annotates it."""

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


@dataclass(frozen=True)
class DeltaInterval:
    metric: str
    delta: float  # mean(current) - mean(reference) over the common queries
    low: float
    high: float
    n_queries: int
    confidence: float

    @property
    def beyond_noise(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {**asdict(self), "beyond_noise": self.beyond_noise}


def paired_bootstrap(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    metric: str,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = DEFAULT_SEED,
) -> DeltaInterval | None:
    """None when the metric or common queries are missing (e.g. a reference without per-query scores)."""
    if metric not in current.columns or metric not in reference.columns:
        return None
    joined = current[["query_id", metric]].merge(reference[["query_id", metric]], on="query_id", suffixes=("_c", "_r"))
    if joined.empty:
        return None
    diff = (joined[f"{metric}_c"] - joined[f"{metric}_r"]).to_numpy(dtype=np.float64)
    rng = np.random.default_rng(seed)
    block = max(1, 2_000_000 // len(diff))  # bound memory on large query sets
    means = np.concatenate(
        [
            diff[rng.integers(0, len(diff), size=(min(block, resamples - start), len(diff)))].mean(axis=1)
            for start in range(0, resamples, block)
        ]
    )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return DeltaInterval(metric, float(diff.mean()), float(low), float(high), len(diff), confidence)
