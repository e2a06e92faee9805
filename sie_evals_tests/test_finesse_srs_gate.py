"""`finesse gate` on an SRS results file (issue 22 item 12): it gated `average_rss` only and crashed with
KeyError 'average_rss'. SRS targets are saved and checked like RSS ones: average_srs, and average_pbi
where a saved target names it. Real probes, real model (all-MiniLM-L6-v2), a small SciFact slice."""

import json

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from sie_evals.finesse.cli import app as finesse_app
from sie_evals.lib.config.model_config import load_model_config
from sie_evals.lib.gates.thresholds import check_value
from sie_evals_tests.conftest import SCIFACT

runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
TASK = "finesse/srs-default"


def _flat(text: str) -> str:
    return " ".join(text.split())


def ok(*args: str) -> str:
    res = runner.invoke(finesse_app, list(args))
    assert res.exit_code == 0, res.output
    return _flat(res.output)


@pytest.fixture
def srs_results(tmp_path, configs_dir, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    monkeypatch.delenv("FINESSE_HMAC_KEY", raising=False)
    cfg = tmp_path / "srs.yaml"
    ok("init", "--output", str(cfg))
    text = cfg.read_text()
    for old, new in (("metric: rss ", "metric: srs "), ("{min: 4, max: 8}", "{min: 4, max: 5}"),
                     ("group_amount: 50 ", "group_amount: 3 ")):  # fmt: skip
        assert old in text
        text = text.replace(old, new)
    cfg.write_text(text)
    out = tmp_path / "out"
    ok("generate", "--config", str(cfg), "--output", str(out), "--samples", "1", "--threads", "1",
       "--dataset-path", str(SCIFACT / "corpus.jsonl"), "--no-progress")  # fmt: skip
    (pt,) = out.glob("*.safetensors")
    ok("score", "--pt-path", str(pt), "--output", str(out))
    path = out / "benchmark_results.json"
    assert json.loads(path.read_text())["metric"] == "srs"
    return path, configs_dir / CONFIG_NAME


def test_a_negative_score_passes_at_its_own_target():
    """SRS is often negative (Q1 of the ordered minus Q3 of the reversed similarities): the margin is a
    fraction of |target|, so a run equal to its target passes and one well below it fails."""
    assert check_value("average_srs", -64.7, -64.7, 0.99).passed
    assert check_value("average_srs", -65.0, -64.7, 0.99).passed  # within 1% of |target|
    assert not check_value("average_srs", -66.0, -64.7, 0.99).passed
    assert (
        check_value("average_rss", 99.0, 100.0, 0.99).passed
        and not check_value("average_rss", 98.9, 100.0, 0.99).passed
    )


def _edit_target(cfg, **metrics: float) -> None:
    yaml = YAML()
    tree = yaml.load(cfg.read_text())
    tree["targets"][TASK]["default"]["probes"]["metrics"].update(metrics)
    with open(cfg, "w") as fh:
        yaml.dump(tree, fh)


def test_srs_results_are_saved_and_gated_like_rss(srs_results):
    path, cfg = srs_results
    results = json.loads(path.read_text())
    srs, pbi = results["average_srs"], results["average_pbi"]
    js = ["--json-path", str(path)]

    # the task follows the results' metric (no --task); nothing saved yet
    assert f"WARN no target saved for all-MiniLM-L6-v2[{TASK}][default][probes]" in ok("gate", *js, "--check-targets")

    saved = ok("gate", *js, "--save-target", "--save-measurement")
    assert f"saved targets[{TASK}][default][probes] <- finesse" in saved
    config = load_model_config(cfg)
    assert config.target(TASK, "default", "probes").metrics == {"average_srs": pytest.approx(srs)}
    assert config.measurement_history(TASK, "default", "probes")[0].metrics == {"average_srs": pytest.approx(srs)}

    passed = ok("gate", *js, "--check-targets", "--check-measurements")
    assert "targets: average_srs" in passed and "measurements: average_srs" in passed and "FAIL" not in passed

    # a target the run falls short of: exit 1, naming average_srs
    _edit_target(cfg, average_srs=srs + abs(srs) * 0.5 + 1.0)
    res = runner.invoke(finesse_app, ["gate", *js, "--check-targets"])
    assert res.exit_code == 1, res.output
    assert "targets: average_srs" in _flat(res.output) and "FAIL" in res.output

    # average_pbi is gated where the target names it (lower is better): a pass at its own value ...
    _edit_target(cfg, average_srs=srs, average_pbi=pbi)
    out = ok("gate", *js, "--check-targets")
    assert "targets: average_pbi" in out and "FAIL" not in out
    # ... and a fail when the saved PBI is far below this run's
    _edit_target(cfg, average_pbi=pbi / 10)
    res = runner.invoke(finesse_app, ["gate", *js, "--check-targets"])
    assert pbi > 0 and res.exit_code == 1, res.output
    assert "targets: average_pbi" in _flat(res.output)


def test_srs_results_with_an_rss_task_is_exit_2(srs_results):
    path, cfg = srs_results
    before = cfg.read_text()
    res = runner.invoke(finesse_app, ["gate", "--json-path", str(path), "--task", "finesse/rss-default",
                                      "--save-target"])  # fmt: skip
    out = _flat(res.output)
    assert res.exit_code == 2, out
    assert "--task finesse/rss-default gates average_rss" in out and "average_srs, average_pbi" in out
    assert "Traceback" not in out and cfg.read_text() == before
