"""A published score for another model revision is never used silently (issue 22 item 7, N8).

`--results-repo` points at a local copy of MTEB's results repository. The score for the revision the
model config pins is used as is; when only another revision has one, it is used with a warning that
names both revisions, in the CLI output and in the JSON report."""

import json

import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import find_model_config
from sie_evals_tests.conftest import MODEL_ID, REPO_ROOT

runner = CliRunner()
PINNED = find_model_config(MODEL_ID, REPO_ROOT / "model_configs").revision
OTHER = "0000deadbeef"


def _publish(repo, revision: str, score: float) -> None:
    folder = repo / "results" / MODEL_ID.replace("/", "__") / revision
    folder.mkdir(parents=True)
    entry = {"hf_subset": "default", "main_score": score, "ndcg_at_10": score}
    result = {"mteb_version": "1.0", "dataset_revision": "x", "task_name": "SciFact", "scores": {"train": [entry]}}
    (folder / "SciFact.json").write_text(json.dumps(result))


def _eval(tmp_path, repo) -> tuple[str, dict]:
    """The benchmark column for SciFact's train split (not in the curated file, so the repository's)."""
    out = tmp_path / "report.json"
    args = ["eval", MODEL_ID, "-t", "beir/SciFact", "--split", "train", "-s", "benchmark", "--no-progress"]
    res = runner.invoke(app, [*args, "--results-repo", str(repo), "-o", str(out)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split()), json.loads(out.read_text())["sources"]["benchmark"]


def test_pinned_revision_is_used_without_a_warning(tmp_path):
    assert PINNED and len(PINNED) == 40
    repo = tmp_path / "rr"
    _publish(repo, PINNED, 0.6)
    later = "ffff0000deadbeef"  # sorts after the pinned one: only the revision rule picks the pinned one
    _publish(repo, later, 0.123)
    assert sorted([PINNED, later])[-1] == later
    text, source = _eval(tmp_path, repo)
    assert source["metrics"]["ndcg_at_10"] == 0.6 and source["info"]["model_revision"] == PINNED
    assert "warning" not in source["info"] and "warning" not in text


@pytest.mark.parametrize("folder", [PINNED[:7], PINNED.upper()], ids=["abbreviated", "upper-case"])
def test_the_same_revision_written_differently_is_the_pinned_one(tmp_path, folder):
    repo = tmp_path / "rr"
    _publish(repo, folder, 0.6)
    text, source = _eval(tmp_path, repo)
    assert source["metrics"]["ndcg_at_10"] == 0.6 and "warning" not in source["info"] and "warning" not in text


def test_another_revisions_score_is_used_with_a_warning_naming_both(tmp_path):
    repo = tmp_path / "rr"
    _publish(repo, OTHER, 0.123)
    text, source = _eval(tmp_path, repo)
    assert source["metrics"]["ndcg_at_10"] == 0.123 and source["info"]["model_revision"] == OTHER
    warning = source["info"]["warning"]
    assert f"model revision {OTHER}" in warning and f"model config's revision {PINNED}" in warning
    assert f"warning: benchmark: {warning}" in text  # the CLI prints what the report keeps


def test_dagster_comparison_table_carries_the_warning(tmp_path, monkeypatch):
    """The `target_comparison` asset's markdown shows the same warning under its benchmark column."""
    from sie_evals.lib.gates.comparison import compare, comparison_markdown
    from sie_evals.lib.gates.keys import ResultKey
    from sie_evals.lib.tasks import resolve_task

    config = find_model_config(MODEL_ID, REPO_ROOT / "model_configs")
    key = ResultKey.quality(config.short_name, "beir/SciFact", "train")
    spec = resolve_task("beir/SciFact")
    for revision, warned in ((PINNED, False), (OTHER, True)):
        repo = tmp_path / revision
        _publish(repo, revision, 0.5)
        monkeypatch.setenv("SIE_EVALS_RESULTS_REPO", str(repo))
        comparison = compare("x", "local", {"ndcg_at_10": 0.4}, None, config, spec, key, ("ndcg_at_10",))
        assert comparison.rows[0]["benchmark"] == 0.5
        markdown = comparison_markdown(comparison)
        assert ("**warning:** benchmark: published score is for model revision" in markdown) is warned
        assert (OTHER in markdown and PINNED in markdown) is warned
