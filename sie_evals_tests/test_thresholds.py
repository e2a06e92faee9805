import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sie_evals.lib.gates.bootstrap import paired_bootstrap
from sie_evals.lib.gates.thresholds import Against, MetricKind, check_against, check_value, metric_kind, resolve_margin


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ndcg_at_10", MetricKind.quality),
        ("mrr_at_1000", MetricKind.quality),
        ("cosine_spearman", MetricKind.quality),
        ("max_ap", MetricKind.quality),
        ("latency_p99_ms", MetricKind.latency),
        ("tokens_per_s", MetricKind.throughput),
        ("ndcg@10", None),
        ("latency_p42", None),
    ],
)
def test_metric_kinds(name, kind):
    assert metric_kind(name) == kind


def test_default_margins_follow_the_seed():
    assert resolve_margin("ndcg_at_10", Against.targets) == 0.99
    assert resolve_margin("ndcg_at_10", Against.measurements) == 0.98
    assert resolve_margin("latency_p50_ms", Against.targets) == 2.5
    assert resolve_margin("items_per_s", Against.targets) == 2.5


def test_quality_margin_boundary():
    assert check_value("ndcg_at_10", 0.99, 1.0, 0.99).passed
    v = check_value("ndcg_at_10", 0.9899, 1.0, 0.99)
    assert not v.passed and v.status == "fail" and v.bound == pytest.approx(0.99)
    assert check_value("ndcg_at_10", 2.0, 1.0, 0.99).passed  # better than target never fails


def test_latency_and_throughput_directions():
    assert check_value("latency_p50_ms", 250.0, 100.0, 2.5).passed
    assert not check_value("latency_p50_ms", 251.0, 100.0, 2.5).passed
    assert check_value("items_per_s", 40.0, 100.0, 2.5).passed
    assert not check_value("items_per_s", 39.0, 100.0, 2.5).passed


def test_missing_target_rule():
    v = check_value("ndcg_at_10", 0.5, None, 0.99)
    assert v.status == "no target" and v.passed
    assert not check_value("ndcg_at_10", 0.5, None, 0.99, require_reference=True).passed
    missing_value = check_against({}, {"ndcg_at_10": 0.5}, Against.targets)
    assert missing_value[0].status == "no value" and not missing_value[0].passed


def test_overrides_most_specific_wins():
    o = {
        "targets": {"quality": 0.95},
        "tasks": {"beir/SciFact": {"targets": {"quality": 0.97}}},
        "metrics": {"ndcg_at_10": {"targets": 0.999}},
    }
    assert resolve_margin("ndcg_at_10", Against.targets, o, "beir/SciFact") == 0.999
    assert resolve_margin("map_at_10", Against.targets, o, "beir/SciFact") == 0.97
    assert resolve_margin("map_at_10", Against.targets, o, "beir/NFCorpus") == 0.95
    assert resolve_margin("map_at_10", Against.measurements, o, "beir/NFCorpus") == 0.98


def _frame(values, seed=0):
    return pd.DataFrame({"query_id": [f"q{i}" for i in range(len(values))], "ndcg_at_10": values})


def test_bootstrap_identical_runs_have_zero_interval():
    vals = np.random.default_rng(1).uniform(size=200)
    ci = paired_bootstrap(_frame(vals), _frame(vals), "ndcg_at_10")
    assert ci.delta == 0 and ci.low == 0 and ci.high == 0 and not ci.beyond_noise


def test_bootstrap_detects_a_real_shift_and_not_noise():
    rng = np.random.default_rng(2)
    ref = rng.uniform(size=300)
    shifted = np.clip(ref - 0.05 + rng.normal(0, 0.01, 300), 0, 1)
    ci = paired_bootstrap(_frame(shifted), _frame(ref), "ndcg_at_10")
    assert ci.beyond_noise and ci.high < 0 and ci.low < ci.delta < ci.high
    assert ci.delta == pytest.approx(float(np.mean(shifted - ref)), abs=1e-12) and ci.n_queries == 300
    # the same data and seed give the same interval, to the bit
    assert paired_bootstrap(_frame(shifted), _frame(ref), "ndcg_at_10") == ci


def _scipy_interval(diff: np.ndarray) -> tuple[float, float]:
    """An independent percentile bootstrap of the mean difference (scipy's, many resamples)."""
    res = stats.bootstrap((diff,), np.mean, n_resamples=50_000, method="percentile", rng=np.random.default_rng(7))
    return res.confidence_interval.low, res.confidence_interval.high


def test_bootstrap_noise_without_a_shift_is_not_beyond_noise():
    """Per-query changes of both signs that cancel exactly: the mean change is 0 and the interval, as wide as
    scipy's bootstrap says, holds 0 on both sides."""
    ref = np.random.default_rng(3).uniform(0.2, 0.8, 300)
    swing = np.random.default_rng(4).uniform(0, 0.2, 150)
    current = ref + np.concatenate([swing, -swing])  # each +x has its -x: the mean change is exactly 0
    ci = paired_bootstrap(_frame(current), _frame(ref), "ndcg_at_10")
    assert ci.delta == pytest.approx(0, abs=1e-12) and not ci.beyond_noise
    low, high = _scipy_interval(current - ref)
    half = (high - low) / 2  # about 0.013 here
    assert ci.low == pytest.approx(low, abs=0.1 * half) and ci.high == pytest.approx(high, abs=0.1 * half)
    assert ci.low < -0.5 * half and ci.high > 0.5 * half  # 0 well inside, not on an edge


def test_bootstrap_a_real_gain_excludes_zero_and_matches_scipy():
    """A gain of 0.02 per query, 8 standard errors of the mean under the noise: beyond noise, positive,
    with scipy's interval."""
    rng = np.random.default_rng(5)
    ref = rng.uniform(0.2, 0.8, 400)
    current = ref + 0.02 + rng.normal(0, 0.05, 400)
    ci = paired_bootstrap(_frame(current), _frame(ref), "ndcg_at_10")
    assert ci.beyond_noise and 0 < ci.low < ci.delta < ci.high
    low, high = _scipy_interval(current - ref)
    half = (high - low) / 2
    assert ci.low == pytest.approx(low, abs=0.1 * half) and ci.high == pytest.approx(high, abs=0.1 * half)
    # seed-independent: another seed moves the edges by Monte Carlo error only, and 0 stays outside
    other = paired_bootstrap(_frame(current), _frame(ref), "ndcg_at_10", seed=11)
    assert other.low > 0 and other.low == pytest.approx(ci.low, abs=0.1 * half)


def test_bootstrap_without_common_queries_or_metric_is_none():
    a = _frame([0.1, 0.2])
    b = a.assign(query_id=["x", "y"])
    assert paired_bootstrap(a, b, "ndcg_at_10") is None
    assert paired_bootstrap(a, a, "map_at_10") is None
