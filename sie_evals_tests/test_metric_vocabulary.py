"""One metric vocabulary (issue 23 item 3): every metric a real run reports is in lib/core/metric_names.py
and can be targeted (`sie-bench validate` accepts a saved target on it), so a reported metric that a
target cannot name (latency_p99.9_ms was one) fails here, not silently in a user's config.

Real runs: a small quality eval of each native task type on real data, and perf evals (closed loop,
and open loop with an SLO) against the real-model OpenAI-compatible test server on 127.0.0.1."""

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.core import metric_names as mn
from sie_evals.lib.gates.target_metrics import vocabulary
from sie_evals_tests import openai_server

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
NATIVE_TASKS = ("beir/SciFact", "mteb/Banking77Classification", "mteb/TwitterURLCorpus", "mteb/STSBenchmark")
PERF_VARIANT = "perf@corpus-b1-c2/test@q20-c300/openai/some-cpux2"
runner = CliRunner()


def _reported(report_path: Path, source: str) -> set[str]:
    metrics = json.loads(report_path.read_text())["sources"][source]["metrics"]
    return {name for name, value in metrics.items() if isinstance(value, int | float)}


def _eval(out: Path, *args: str) -> set[str]:
    res = runner.invoke(app, ["eval", MODEL, "-o", str(out), "--no-record", "--no-progress", *args])
    assert res.exit_code == 0, res.output
    return _reported(out, "openai" if "openai" in args else "local")


def _validate_targets(configs_dir: Path, monkeypatch, task: str, variant: str, metrics: set[str]) -> tuple[int, str]:
    """Save a target on every metric for `task` / `variant` and run `sie-bench validate` on the config."""
    cfg = configs_dir / CONFIG_NAME
    yaml = YAML()
    tree = yaml.load(cfg.read_text())
    entry = {"source": "local", "saved": "2026-01-01T00:00:00+00:00", "metrics": {m: 1.0 for m in sorted(metrics)}}
    tree.setdefault("targets", {}).setdefault(task, {}).setdefault("default", {})[variant] = entry
    with open(cfg, "w") as fh:
        yaml.dump(tree, fh)
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    res = runner.invoke(app, ["validate", str(cfg)])
    return res.exit_code, " ".join(res.output.split())


def _assert_targetable(names: set[str], task: str, variant: str, configs_dir: Path, monkeypatch) -> None:
    assert names, "the run reported no metrics"
    names = {n for n in names if not mn.is_diagnostic(n)}  # thresholds: reported, declared, never gated
    outside = sorted(n for n in names if mn.metric_kind(n) is None)
    assert outside == [], f"reported but not in the metric vocabulary: {outside}"
    vocab = vocabulary(task, variant)
    refused = sorted(n for n in names if not vocab.allows(n))
    assert refused == [], f"{task} {variant}: reported but not targetable: {refused}"
    code, out = _validate_targets(configs_dir, monkeypatch, task, variant, names)
    assert code == 0, out


@pytest.mark.slow
@pytest.mark.parametrize("task", NATIVE_TASKS)
def test_every_metric_a_quality_run_reports_can_be_targeted(task, tmp_path, configs_dir, monkeypatch):
    names = _eval(tmp_path / "r.json", "-t", task, "--limit-queries", "20", "--corpus-size", "300")
    variant = json.loads((tmp_path / "r.json").read_text())["variant"]
    if task == "mteb/TwitterURLCorpus":
        assert set(mn.PAIR_THRESHOLDS) <= names and not any(mn.metric_kind(n) for n in mn.PAIR_THRESHOLDS)
    _assert_targetable(names, task, variant, configs_dir, monkeypatch)


@pytest.mark.slow
def test_every_metric_a_perf_run_reports_can_be_targeted(tmp_path, configs_dir, monkeypatch):
    """Closed loop, and open loop with an SLO (service time, send lag, drops, goodput, slo_met, ...)."""
    perf = ["-t", "beir/SciFact", "--type", "perf", "-s", "openai", "--limit-queries", "20", "--corpus-size", "300"]
    perf += ["--requests", "30", "--warmup", "2", "--trials", "1", "-c", "2"]
    with openai_server.running(tmp_path / "server.log") as port:
        url = ["--openai-url", f"http://127.0.0.1:{port}"]
        closed = _eval(tmp_path / "closed.json", *perf, *url)
        opened = _eval(tmp_path / "open.json", *perf, *url, "--rate", "40", "--slo", "p99_ms<=5000")
    assert {"latency_p99.9_ms", "items_per_s"} <= closed and {"service_p50_ms", "goodput_per_s"} <= opened
    _assert_targetable(closed | opened, "beir/SciFact", PERF_VARIANT, configs_dir, monkeypatch)


def test_slo_metrics_report_rows_and_target_metrics_derive_from_the_vocabulary():
    from sie_evals.lib.harness.report import PERF_TABLE_METRICS
    from sie_evals.lib.perf import histogram
    from sie_evals.lib.perf.load import PERF_TARGET_METRICS
    from sie_evals.lib.perf.sweep import SLO_METRICS

    assert SLO_METRICS is mn.SLO_METRICS and PERF_TABLE_METRICS is mn.PERF_TABLE_METRICS
    assert PERF_TARGET_METRICS is mn.PERF_TARGET_METRICS and histogram.PERCENTILES is mn.PERCENTILES
    perf = vocabulary("beir/SciFact", PERF_VARIANT)
    for name in (*SLO_METRICS.values(), *PERF_TABLE_METRICS, *PERF_TARGET_METRICS):
        assert mn.metric_kind(name) is not None and perf.allows(name), name
    # every reported percentile is a latency metric, an SLO and a table row
    for stat in mn.PERCENTILES:
        assert mn.time_metric("latency", stat) in PERF_TABLE_METRICS and f"{stat}_ms" in SLO_METRICS
    assert not perf.allows("ndcg_at_10") and not perf.allows("average_pbi")  # quality is not a perf target
    assert not vocabulary("beir/SciFact", "test").allows("latency_p99.9_ms")
