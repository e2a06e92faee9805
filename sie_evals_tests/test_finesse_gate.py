"""Finesse targets and measurements from the CLI (`finesse gate`), with the same keys, margins and
run-conditions diagnosis as `sie-bench eval` (lib/gates)."""

import json
import re

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from sie_evals.finesse.cli import app as finesse_app
from sie_evals.lib.config.model_config import load_model_config
from sie_evals_tests.conftest import SCIFACT

runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
TASK = "finesse/rss-default"


def ok(*args):
    res = runner.invoke(finesse_app, list(args))
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture
def results(tmp_path, configs_dir, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    monkeypatch.delenv("FINESSE_HMAC_KEY", raising=False)
    ok("init", "--output", str(tmp_path / "bench.yaml"))
    text = (tmp_path / "bench.yaml").read_text()
    (tmp_path / "bench.yaml").write_text(re.sub(r"max: \d+", "max: 5", text, count=1))
    ok("generate", "--config", str(tmp_path / "bench.yaml"), "--output", str(tmp_path / "out"), "--samples", "2",
       "--threads", "1", "--dataset-path", str(SCIFACT / "corpus.jsonl"), "--no-progress")  # fmt: skip
    (pt,) = (tmp_path / "out").glob("*.safetensors")
    ok("score", "--pt-path", str(pt), "--output", str(tmp_path / "out"))
    return tmp_path / "out" / "benchmark_results.json", configs_dir


def test_save_check_and_diagnose_finesse_targets(results):
    path, configs = results
    js = ["--json-path", str(path)]
    none = ok("gate", *js, "--check-targets")
    assert "WARN no target saved" in none.output
    assert runner.invoke(finesse_app, ["gate", *js, "--check-targets", "--require-targets"]).exit_code == 1

    saved = ok("gate", *js, "--save-target", "--save-measurement")
    assert f"saved targets[{TASK}][default][probes] <- finesse" in " ".join(saved.output.split())
    config = load_model_config(configs / CONFIG_NAME)
    target = config.target(TASK, "default", "probes")
    rss = json.loads(path.read_text())["average_rss"]
    assert target.metrics == {"average_rss": pytest.approx(rss)} and target.conditions["software"]["transformers"]
    assert len(config.measurement_history(TASK, "default", "probes")) == 1
    assert "targets: average_rss" in ok("gate", *js, "--check-targets", "--check-measurements").output

    # a target from another transformers version and 5% higher: exit 1, and the change is named
    cfg = configs / CONFIG_NAME
    yaml = YAML()
    tree = yaml.load(cfg.read_text())
    entry = tree["targets"][TASK]["default"]["probes"]
    entry["metrics"]["average_rss"] = rss * 1.05
    entry["conditions"]["software"]["transformers"] = "4.0.0-last-pass"
    with open(cfg, "w") as fh:
        yaml.dump(tree, fh)
    res = runner.invoke(finesse_app, ["gate", *js, "--check-targets"])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "average_rss" in text and "changed since last pass: transformers 4.0.0-last-pass -> " in text

    # a tampered results file is refused before anything is checked or saved
    forged = path.with_name("forged.json")
    forged.write_text(path.read_text().replace(f'"average_rss": {rss}', '"average_rss": 999.0'))
    before = cfg.read_text()
    assert runner.invoke(finesse_app, ["gate", "--json-path", str(forged), "--save-target"]).exit_code == 1
    assert cfg.read_text() == before
