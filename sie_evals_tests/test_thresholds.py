import numpy as np
import pandas as pd
import pytest

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
    noisy = np.clip(ref + rng.normal(0, 0.2, 300), 0, 1)
    noise_ci = paired_bootstrap(_frame(noisy), _frame(ref), "ndcg_at_10")
    assert noise_ci.low < 0 < noise_ci.high or abs(noise_ci.delta) < 0.02


def test_bootstrap_without_common_queries_or_metric_is_none():
    a = _frame([0.1, 0.2])
    b = a.assign(query_id=["x", "y"])
    assert paired_bootstrap(a, b, "ndcg_at_10") is None
    assert paired_bootstrap(a, a, "map_at_10") is None
