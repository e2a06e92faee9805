"""Confidence intervals across perf trials (lib/perf/trials.py), checked against scipy's own t
interval and Welch test, and end to end: a perf report carries them, and a perf check against a
saved target says, next to the margin verdict, whether the change is beyond the trials' noise
(the server is a null endpoint: fast, so the test is short)."""

import json

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.perf.overhead import null_endpoint
from sie_evals.lib.perf.trials import change_interval, t_interval
from sie_evals_tests.conftest import MODEL_ID
from sie_evals_tests.test_perf_vs_wrk import reply_json


def test_t_interval_is_scipys():
    values = [10.2, 11.0, 9.7, 10.5, 10.9]
    ci = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert ci["low"] == pytest.approx(low) and ci["high"] == pytest.approx(high) and ci["n"] == 5
    assert t_interval([3.0]) is None  # one trial: no interval


def test_change_interval_is_welchs_and_says_beyond_noise():
    rng = np.random.default_rng(0)
    ref = rng.normal(10.0, 0.5, 5)
    same = rng.normal(10.0, 0.5, 5)
    slower = rng.normal(14.0, 0.5, 5)
    for cur in (same, slower):
        got = change_interval(cur, ref, "latency_p50_ms")
        want = stats.ttest_ind(cur, ref, equal_var=False).confidence_interval(0.95)
        assert got["low"] == pytest.approx(want.low) and got["high"] == pytest.approx(want.high)
    assert change_interval(same, ref, "latency_p50_ms")["beyond_noise"] is False
    assert change_interval(slower, ref, "latency_p50_ms")["beyond_noise"] is True
    assert change_interval([1.0], ref, "latency_p50_ms") is None


def test_report_has_trial_intervals_and_the_check_says_beyond_noise(configs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    out = tmp_path / "perf.json"
    perf = ["--type", "perf", "--workload", "queries", "-c", "2", "--requests", "300", "--warmup", "20"]
    common = [*perf, "--trials", "3", "--limit-queries", "20", "--corpus-size", "300", "--no-progress", "--no-record"]
    with null_endpoint(reply_json().encode()) as url:

        def run(*args):
            return CliRunner().invoke(
                app,
                ["eval", MODEL_ID, "-t", "beir/SciFact", "--openai-url", url, *common, "--output", str(out), *args],
            )

        res = run("-s", "openai", "--save-targets", "openai")
        assert res.exit_code == 0, res.output
        src = json.loads(out.read_text())["sources"]["openai"]
        ci = src["trials_ci"]
        assert set(ci) >= {"latency_p50_ms", "latency_p99_ms", "requests_per_s"}
        for name, interval in ci.items():
            values = [t[name] for t in src["trials"]]
            assert interval["n"] == 3 and interval["low"] <= np.mean(values) <= interval["high"]
        assert "95% CI over trials: latency_p50_ms" in res.output
        res = run("-s", "openai,targets", "--check-targets")
    report = json.loads(out.read_text())
    verdicts = {v["metric"]: v for v in report["checks"][0]["verdicts"]}
    assert set(verdicts) >= {"latency_p50_ms", "latency_p99_ms", "items_per_s", "tokens_per_s"}
    for name in ("latency_p50_ms", "latency_p99_ms", "items_per_s", "tokens_per_s"):
        interval = verdicts[name]["delta_interval"]
        assert interval["method"] == "welch-t over trials" and isinstance(interval["beyond_noise"], bool)
        assert interval["low"] <= interval["delta"] <= interval["high"]
    assert "beyond noise" in res.output
    # the saved target keeps each trial's values (a few numbers, not the per-request rows)
    assert len(src["run_conditions"]["trial_values"]["latency_p99_ms"]) == 3
