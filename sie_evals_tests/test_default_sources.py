"""`-s` defaults to the model config's first listed source (issue 17, point 2)."""

import json

from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals_tests.conftest import MODEL_ID

runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"


def _sources_block(text: str) -> str:
    start = text.index("\nsources:\n") + 1
    end = start + len("sources:\n")
    while text[end:].startswith("  "):
        end = text.index("\n", end) + 1
    return text[start:end]


def _eval(tmp_path, *extra: str) -> dict:
    out = tmp_path / "report.json"
    args = ["eval", MODEL_ID, "-t", "beir/SciFact", "--limit-queries", "3", "--corpus-size", "30", "--no-progress"]
    res = runner.invoke(app, [*args, "-o", str(out), *extra])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())


def test_the_shipped_config_lists_local_first():
    """So that `sie-bench eval MODEL -t TASK` runs on a fresh machine (SIE's docs default to sie)."""
    from sie_evals.lib.config.model_config import find_model_config

    assert find_model_config(MODEL_ID).sources[0] == "local"


def test_without_s_the_first_listed_source_is_used(configs_dir, monkeypatch, tmp_path):
    cfg = configs_dir / CONFIG_NAME
    text = cfg.read_text()
    cfg.write_text(text.replace(_sources_block(text), "sources:\n  - benchmark\n  - local\n"))
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    assert _eval(tmp_path)["source_order"] == ["benchmark"]
    assert _eval(tmp_path, "-s", "targets,benchmark")["source_order"] == ["targets", "benchmark"]  # -s wins


def test_help_says_what_the_default_is():
    res = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "400"})
    assert "first source listed in the model config" in " ".join(res.output.split())
