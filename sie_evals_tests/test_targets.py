"""Targets and measurements end to end with the real CLI, model and a slice of real SciFact."""

import json
import os
import re
import subprocess
import sys

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import load_model_config
from sie_evals_tests.conftest import MODEL_ID, REPO_ROOT

runner = CliRunner()
SLICE = ["--limit-queries", "20", "--corpus-size", "200", "--no-progress", "--no-record"]
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"


@pytest.fixture
def configs(configs_dir, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    return configs_dir


def _eval(*args, out=None):
    extra = ["--output", str(out)] if out else []
    return runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", *args, *SLICE, *extra])


def _set_target(path, variant, metric, factor):
    yaml = YAML()
    tree = yaml.load(path.read_text())
    metrics = tree["targets"]["beir/SciFact"]["default"][variant]["metrics"]
    metrics[metric] = float(metrics[metric]) * factor
    with open(path, "w") as fh:
        yaml.dump(tree, fh)


def _set_target_value(path, variant, metric, value):
    yaml = YAML()
    tree = yaml.load(path.read_text())
    tree["targets"]["beir/SciFact"]["default"][variant]["metrics"][metric] = float(value)
    with open(path, "w") as fh:
        yaml.dump(tree, fh)


def test_save_then_check_then_drift(configs, tmp_path):
    cfg = configs / CONFIG_NAME
    res = _eval("-s", "local", "--save-targets", "local")
    assert res.exit_code == 0, res.output
    assert "saved targets[beir/SciFact][default][test@q20-c200] <- local" in res.output
    saved = load_model_config(cfg).target("beir/SciFact", "default", "test@q20-c200")
    assert saved.source == "local" and "ndcg_at_10" in saved.metrics
    # the default profile's runtime is auto: the version of the runtime it chose (and which) is recorded
    engine = {"torch": "transformers ", "onnx": "onnxruntime ", "openvino": "openvino "}[saved.conditions["runtime"]]
    assert saved.conditions["dataset_hash"] and saved.conditions["engine_version"].startswith(engine)
    assert (configs / saved.per_query).is_file()

    out = tmp_path / "r.json"
    res = _eval("-s", "local,targets", "--check-targets", out=out)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["checks"][0]["passed"] and report["sources"]["targets"]["metrics"]["ndcg_at_10"] > 0
    assert {v["status"] for v in report["checks"][0]["verdicts"]} == {"pass"}

    _set_target(cfg, "test@q20-c200", "map_at_10", 1.02)
    res = _eval("-s", "local,targets", "--check-targets", out=out)
    assert res.exit_code == 1, res.output
    assert "local/map_at_10 (targets)" in " ".join(res.output.split())
    failed = [v for v in json.loads(out.read_text())["checks"][0]["verdicts"] if not v["passed"]]
    assert [v["metric"] for v in failed] == ["map_at_10"]
    assert failed[0]["ratio"] == pytest.approx(1 / 1.02, rel=1e-6) and failed[0]["margin"] == 0.99
    assert failed[0]["delta_interval"]["n_queries"] == 20


def test_missing_target_passes_unless_required(configs):
    res = _eval("-s", "local", "--check-targets")
    assert res.exit_code == 0 and "no target" in res.output
    res = _eval("-s", "local", "--check-targets", "--require-targets")
    assert res.exit_code == 1


def test_check_measurements_uses_the_latest(configs, tmp_path):
    cfg = configs / CONFIG_NAME
    for _ in range(2):
        assert _eval("-s", "local", "--save-measurements", "local").exit_code == 0
    history = load_model_config(cfg).measurement_history("beir/SciFact", "default", "test@q20-c200")
    assert len(history) == 2 and history[0].id != history[1].id
    out = tmp_path / "m.json"
    res = _eval("-s", "local,measurements", "--check-measurements", out=out)
    assert res.exit_code == 0, res.output
    check = json.loads(out.read_text())["checks"][0]
    assert check["reference"]["id"] == history[-1].id and check["verdicts"][0]["margin"] == 0.98


def _with_targets(text, block):
    """Replace the config's targets: section (the shipped targets) with `block`."""
    return re.sub(r"(?ms)^targets:.*?(?=^measurements:)", block.rstrip() + "\n", text)


def test_comments_and_order_survive_a_save(configs):
    cfg = configs / CONFIG_NAME
    cfg.write_text("# hand-written header\n" + cfg.read_text().replace("tasks:", "tasks:  # evaluated nightly"))
    before = cfg.read_text()
    assert _eval("-s", "local", "--save-targets", "local").exit_code == 0
    after = cfg.read_text()
    assert after.startswith("# hand-written header\n") and "tasks:  # evaluated nightly" in after
    assert "# Same model in bfloat16" in after
    assert after.index("profiles:") < after.index("tasks:") < after.index("targets:")
    assert after[: before.index("targets:")] == before[: before.index("targets:")]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda t: t + "\n  : bad: [\n", "not valid YAML"),
        (
            lambda t: _with_targets(
                t,
                "targets:\n  beir/SciFact:\n    default:\n      test:\n        source: x\n"
                "        saved: now\n        metrics: {ndcg_at_11x: 0.5}",
            ),
            "unknown metric",
        ),
        (
            lambda t: _with_targets(
                t,
                "targets:\n  beir/SciFact:\n    default:\n      test:\n        source: x\n"
                "        saved: now\n        metrics: {ndcg_at_10: high}",
            ),
            "targets.beir/SciFact.default.test.metrics.ndcg_at_10",
        ),
    ],
)
def test_bad_config_is_an_input_error_and_nothing_is_written(configs, mutate, needle):
    cfg = configs / CONFIG_NAME
    cfg.write_text(mutate(cfg.read_text()))
    before = cfg.read_text()
    files_before = sorted(p for p in configs.rglob("*") if p.is_file())
    res = _eval("-s", "local", "--save-targets", "local")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert needle in text and CONFIG_NAME in text
    assert cfg.read_text() == before
    assert sorted(p for p in configs.rglob("*") if p.is_file()) == files_before  # no per-query Parquet either


def test_save_options_are_validated(configs):
    assert _eval("-s", "local", "--save-targets", "sie").exit_code == 2
    assert _eval("-s", "local,targets", "--save-targets", "targets").exit_code == 2
    res = _eval("-s", "local,benchmark", "--save-targets", "benchmark")
    assert res.exit_code == 2 and "full split" in res.output


def test_perf_latency_target_drift(configs, tmp_path):
    # Short query texts, enough warm-up for the freshly loaded model, and the median of 3 trials: on this
    # noisy VM a single short trial can be 2x off, which would make the x0.3 target pass by accident.
    perf = [
        "--type",
        "perf",
        "--workload",
        "queries",
        "-c",
        "2",
        "-b",
        "2",
        "--requests",
        "16",
        "--warmup",
        "8",
        "--trials",
        "3",
    ]
    out = tmp_path / "p.json"
    res = _eval("-s", "local", *perf, "--save-targets", "local", out=out)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    metrics = report["sources"]["local"]["metrics"]
    assert metrics["latency_p50_ms"] > 0 and metrics["items_per_s"] > 0
    assert (tmp_path / report["sources"]["local"]["latency_histogram_file"]).read_bytes()[:4] == b"\x89PNG"
    # a perf key names the load shape, the data slice, the engine and this machine's hardware
    from sie_evals.lib.core.run_conditions import hardware
    from sie_evals.lib.gates.keys import hardware_fingerprint

    variant = f"perf@queries-b2-c2/test@q20-c200/local/{hardware_fingerprint(hardware())}"
    assert report["variant"] == variant
    # Each attempt sets the p50 target to 0.3 x the latest measured p50 and checks with a new run. On this
    # VM one run can be 2x faster than the one before; that would hide the drift, so up to 3 attempts.
    measured, seen = metrics["latency_p50_ms"], []
    for _ in range(3):
        _set_target_value(configs / CONFIG_NAME, variant, "latency_p50_ms", 0.3 * measured)
        res = _eval("-s", "local,targets", *perf, "--check-targets", out=out)
        verdicts = json.loads(out.read_text())["checks"][0]["verdicts"]
        failed = [v["metric"] for v in verdicts if not v["passed"]]
        if res.exit_code == 1 and "latency_p50_ms" in failed:
            break
        seen.append((round(measured, 1), res.exit_code, failed))
        measured = json.loads(out.read_text())["sources"]["local"]["metrics"]["latency_p50_ms"]
    else:
        pytest.fail(f"a p50 target at 0.3x the measured latency never failed the check: {seen}")
    p50 = next(v for v in verdicts if v["metric"] == "latency_p50_ms")
    assert p50["margin"] == 2.5 and p50["value"] > p50["bound"]


@pytest.mark.slow
def test_concurrent_save_measurements_lose_nothing(configs, session_cache):
    """Eight processes append at once; the file lock serialises them."""
    # Warm the cache first so the eight processes only contend on the config file.
    assert _eval("-s", "local").exit_code == 0
    env = {**os.environ, "SIE_EVALS_MODEL_CONFIGS_DIR": str(configs), "SIE_EVALS_CACHE_DIR": str(session_cache)}
    cmd = [
        sys.executable,
        "-m",
        "sie_evals.cli",
        "eval",
        MODEL_ID,
        "-t",
        "beir/SciFact",
        "-s",
        "local",
        "--save-measurements",
        "local",
        *SLICE,
    ]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    history = load_model_config(configs / CONFIG_NAME).measurement_history("beir/SciFact", "default", "test@q20-c200")
    assert len(history) == 8 and len({m.id for m in history}) == 8
    assert all((configs / m.per_query).is_file() for m in history)
