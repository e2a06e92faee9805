"""Saved targets as a hostile user meets them (issue #12, point 8): non-numeric target values, a target
for a metric the task never produces, a split that is a path, a save killed by kill -9, a writer
stuck behind a lock. Each is exit 2 (or a clear timeout), names the file and field, writes nothing."""

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import load_model_config
from sie_evals_tests.conftest import DATA, MODEL_ID, REPO_ROOT

runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
SLICE = ["--limit-queries", "5", "--corpus-size", "50", "--no-progress", "--no-record"]


@pytest.fixture
def configs(configs_dir, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    return configs_dir


def _with_targets(text: str, block: str) -> str:
    """Replace the config's targets: section with `block`."""
    return re.sub(r"(?ms)^targets:.*?(?=^measurements:)", block.rstrip() + "\n", text)


def _target(metrics: str, variant: str = "test") -> str:
    return (
        f"targets:\n  beir/SciFact:\n    default:\n      {variant}:\n        source: local\n"
        f"        saved: '2026-01-01T00:00:00+00:00'\n        metrics: {metrics}\n"
    )


@pytest.mark.parametrize(
    ("metrics", "shown"),
    [("{ndcg_at_10: true}", "not a boolean (true)"), ("{ndcg_at_10: '0.65'}", "'0.65' (str)")],
)
def test_boolean_or_quoted_target_is_not_a_number(configs, metrics, shown):
    cfg = configs / CONFIG_NAME
    cfg.write_text(_with_targets(cfg.read_text(), _target(metrics)))
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert CONFIG_NAME in text and "targets.beir/SciFact.default.test.metrics.ndcg_at_10" in text
    assert "must be a number" in text and shown in text


def test_target_for_a_metric_the_task_never_produces_is_an_input_error(configs):
    """A classification metric saved for a retrieval task used to be checked as "no value" while
    ndcg & co. went unchecked."""
    cfg = configs / CONFIG_NAME
    cfg.write_text(_with_targets(cfg.read_text(), _target("{accuracy: 0.9}", "test@q5-c50")))
    before = cfg.read_text()
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", "-s", "local", "--check-targets", *SLICE])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert CONFIG_NAME in text and "targets[beir/SciFact][default][test@q5-c50].metrics: accuracy" in text
    assert "not produced" in text
    assert cfg.read_text() == before


def test_split_that_is_a_path_is_refused_and_nothing_saved(configs, tmp_path, monkeypatch):
    # a data root where `scifact/qrels/../../x.tsv` exists, so only the name check can stop it
    root = tmp_path / "data"
    (root / "scifact" / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (root / "scifact" / name).symlink_to(DATA / "scifact" / name)
    (root / "x.tsv").write_text((DATA / "scifact" / "qrels" / "test.tsv").read_text())
    monkeypatch.setenv("SIE_EVALS_DATA_DIR", str(root))
    cfg = configs / CONFIG_NAME
    before = cfg.read_text()
    res = runner.invoke(
        app,
        [
            "eval",
            MODEL_ID,
            "-t",
            "beir/SciFact",
            "-s",
            "local",
            "--split",
            "../../x",
            "--save-targets",
            "local",
            *SLICE,
        ],
    )
    assert res.exit_code == 2, res.output
    assert "--split '../../x' is not a valid name" in " ".join(res.output.split())
    assert cfg.read_text() == before
    assert not (configs / "per_query" / "all-MiniLM-L6-v2").exists()  # no per-query Parquet written


def test_variant_key_that_is_a_path_is_a_config_error(configs):
    cfg = configs / CONFIG_NAME
    cfg.write_text(_with_targets(cfg.read_text(), _target("{ndcg_at_10: 0.6}", "'../../x'")))
    res = runner.invoke(app, ["validate", str(cfg)])
    assert res.exit_code == 2, res.output
    assert "variant '../../x'" in " ".join(res.output.split())


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, tempfile
    from pathlib import Path
    import sie_evals.lib.gates.saved_results as saved

    def killed_mid_write(path, text):  # the temp file is half written when the process dies
        fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
        os.write(fd, text[: len(text) // 2].encode())
        os.kill(os.getpid(), signal.SIGKILL)

    saved.atomic_write_text = killed_mid_write
    from sie_evals.cli import app
    sys.argv = ["sie-bench", *sys.argv[1:]]
    app()
    """
)


def test_save_killed_mid_write_leaves_nothing_behind(configs):
    cfg = configs / CONFIG_NAME
    before = cfg.read_text()
    shipped = {p.resolve() for p in configs.rglob("*.parquet")}  # other models' saved per-query files
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = ["eval", MODEL_ID, "-t", "beir/SciFact", "-s", "local", "--save-targets", "local", *SLICE]
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, *args], env=env, capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    leftovers = [
        p
        for p in configs.rglob("*")
        if p.name.endswith(".tmp") or (p.suffix == ".parquet" and p.resolve() not in shipped)
    ]
    assert leftovers, "the killed writer should have left a temp file and a Parquet file"
    assert cfg.read_text() == before  # the config itself is untouched
    # git ignores what an interrupted write leaves
    rel = [str(p.relative_to(configs.parent)) for p in leftovers if p.name.endswith(".tmp")]
    check = subprocess.run(["git", "check-ignore", "--no-index", *rel], cwd=REPO_ROOT, capture_output=True, text=True)
    assert sorted(check.stdout.split()) == sorted(rel), check.stdout + check.stderr

    # the next save (under the lock) removes both, and keeps what is referenced
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", "-s", "local", "--save-targets", "local", *SLICE])
    assert res.exit_code == 0, res.output
    config = load_model_config(cfg)
    referenced = {
        (configs / rel).resolve()
        for p in config.targets.values()
        for v in p.values()
        for e in v.values()
        for rel in (e.per_query, e.run)  # per-query scores and ranking
        if rel
    }
    left = [p for p in configs.rglob("*") if p.name.endswith(".tmp")]
    parquet = {p.resolve() for p in configs.rglob("*.parquet")} - shipped
    assert left == [] and parquet == referenced and len(referenced) == 2
    assert all(p.exists() for p in shipped)  # another model's saved per-query files are never touched


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sie_evals.lib.gates.saved_results import config_lock
    with config_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def test_writer_behind_a_held_lock_names_the_holder_and_times_out(configs):
    cfg = configs / CONFIG_NAME
    before = cfg.read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(cfg)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        # a separate process, so a writer that waits forever fails this test instead of hanging it
        writer = subprocess.run(
            [sys.executable, "-m", "sie_evals.cli", "eval", MODEL_ID, "-t", "beir/SciFact", "-s", "benchmark",
             "--save-targets", "benchmark", "--no-progress", "--no-record"],
            env={**env, "SIE_EVALS_MODEL_CONFIGS_DIR": str(configs), "SIE_EVALS_LOCK_TIMEOUT_S": "2"},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert writer.returncode == 1, writer.stdout + writer.stderr
    err = " ".join(writer.stderr.split())
    assert f"held by pid {holder.pid}" in err and "gave up after 2 s" in err, err
    assert waited < 60
    assert cfg.read_text() == before
