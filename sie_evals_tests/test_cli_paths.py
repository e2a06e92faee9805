"""Bad paths and names given to the CLI (issue 22: N5, N77, N104/N105, N108/N109, N117): each is exit 2
naming the path (and line) before any work starts, and nothing is written."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.harness.eval_run import report_files
from sie_evals_tests.conftest import MODEL_ID, skip_unless_required

runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
TINY = ["--limit-queries", "5", "--corpus-size", "20", "--no-progress", "-s", "local"]
# Root ignores file modes; without these capabilities it is held to them like any other user.
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _as_unprivileged() -> list[str]:
    """A prefix that runs a command without the power to ignore file modes, or a skip."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        skip_unless_required("running as root without setpriv (util-linux): root reads and writes any directory")
    return NO_DAC


def _cli(args: list[str], env: dict[str, str], prefix: list[str] | None = None) -> tuple[int, str]:
    """The real CLI in a subprocess (for checks that need another user's permissions)."""
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-m", "sie_evals.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, _flat(proc.stdout + proc.stderr)


# ---------------------------------------------------------------- N5: tasks --type


def test_tasks_unknown_type_is_exit_2_listing_the_valid_types():
    res = runner.invoke(app, ["tasks", "--type", "bogus"])
    text = _flat(res.output)
    assert res.exit_code == 2, text
    assert "unknown task type 'bogus'" in text
    assert "valid task types:" in text and "Retrieval" in text and "Clustering" in text
    ok = runner.invoke(app, ["tasks", "--type", "retrieval"])  # case-insensitive, as before
    assert ok.exit_code == 0, ok.output
    assert "mteb/SciFact: Retrieval" in ok.output


# ---------------------------------------------------------------- N117: migrate on a non-UTF-8 config


def test_migrate_non_utf8_config_is_exit_2_naming_file_and_line(configs_dir, monkeypatch):
    cfg = configs_dir / CONFIG_NAME
    original = cfg.read_bytes()
    cfg.write_bytes(original + b"# r\xe9sum\xe9\n")
    line = original.count(b"\n") + 1
    damaged = cfg.read_bytes()
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    for args in (["migrate"], ["migrate", str(cfg)]):
        res = runner.invoke(app, args)
        text = _flat(res.output)
        assert res.exit_code == 2, (text, res.exception)
        assert f"{CONFIG_NAME}:{line}:4: not UTF-8 text (byte 0xe9)" in text
        assert cfg.read_bytes() == damaged


# ---------------------------------------------------------------- N104/N105: DAGSTER_HOME for `sie-bench ui`


@pytest.fixture
def no_dagster(monkeypatch):
    """`sie-bench ui` must refuse before it starts anything: starting a process fails the test."""

    def started(*args, **kwargs):
        raise AssertionError(f"a process was started: {args[0] if args else kwargs}")

    monkeypatch.setattr(subprocess, "Popen", started)
    monkeypatch.setattr(subprocess, "call", started)


BAD_INSTANCE = "storage:\n  sqlite:\n    base_dir: 3\nrun_retries: {enabled: true}\nbogus_key: 1\n"


@pytest.mark.parametrize("case", ["under_a_file", "a_file", "bad_yaml", "not_instance_config", "not_utf8"])
def test_ui_unusable_dagster_home_is_exit_2_before_dagster_starts(tmp_path, monkeypatch, no_dagster, case):
    afile = tmp_path / "afile"
    afile.write_text("x")
    home = tmp_path / "dh"
    if case == "under_a_file":
        home, expected = afile / "dh", f"DAGSTER_HOME {afile / 'dh'}: {afile} is a file, not a directory"
    elif case == "a_file":
        home, expected = afile, f"DAGSTER_HOME {afile} is a file, not a directory"
    else:
        home.mkdir()
        content = {
            "bad_yaml": b"storage:\n  sqlite: [\n",
            "not_instance_config": BAD_INSTANCE.encode(),
            "not_utf8": b"telemetry:\n  enabled: false # caf\xe9\n",
        }[case]
        (home / "dagster.yaml").write_bytes(content)
        expected = {
            "bad_yaml": f"{home / 'dagster.yaml'}:3:1: not valid YAML: expected the node content",
            "not_instance_config": f"{home / 'dagster.yaml'}: not a valid Dagster instance config:",
            "not_utf8": f"{home / 'dagster.yaml'}:2:23: not UTF-8 text (byte 0xe9)",
        }[case]
    before = _files(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    res = runner.invoke(app, ["ui", "--port", "3999"])
    text = _flat(res.output)
    assert res.exit_code == 2, (text, res.exception)
    assert expected in text
    if case == "not_instance_config":  # Dagster's schema names each field that is wrong
        assert 'unexpected config entry "bogus_key" at the root' in text
        assert "root:storage:sqlite:base_dir" in text
    assert _files(tmp_path) == before and afile.read_text() == "x"


def test_ui_unreadable_dagster_home_is_exit_2(tmp_path):
    prefix = _as_unprivileged()
    home = tmp_path / "dh"
    home.mkdir()
    home.chmod(0o000)
    try:
        code, text = _cli(["ui", "--port", "3999"], {"DAGSTER_HOME": str(home)}, prefix)
        code_under, text_under = _cli(["ui", "--port", "3999"], {"DAGSTER_HOME": str(home / "sub")}, prefix)
    finally:
        home.chmod(0o755)
    assert code == 2, text
    assert f"DAGSTER_HOME {home}: permission denied" in text and "Traceback" not in text
    assert code_under == 2, text_under
    assert f"DAGSTER_HOME {home / 'sub'}:" in text_under and "Traceback" not in text_under
    assert list(home.iterdir()) == []


# ---------------------------------------------------------------- N108/N109: -o


@pytest.mark.parametrize("case", ["under_a_file", "a_directory"])
def test_output_path_unusable_is_exit_2_before_the_eval_and_writes_nothing(tmp_path, monkeypatch, case):
    cache = tmp_path / "cache"  # the eval must not even start: no embeddings computed
    cache.mkdir()
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    (work / "afile").write_text("x")
    (work / "outdir").mkdir()
    out, expected = {
        "under_a_file": (work / "afile" / "x.json", f"-o {work / 'afile' / 'x.json'}: {work / 'afile'} is a file"),
        "a_directory": (work / "outdir", f"-o {work / 'outdir'} is a directory; give a file name"),
    }[case]
    before = _files(work)
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", *TINY, "-o", str(out)])
    text = _flat(res.output)
    assert res.exit_code == 2, (text, res.exception)
    assert expected in text
    assert _files(work) == before, "files were written beside the -o path"
    assert list(cache.iterdir()) == [], "the eval ran before -o was checked"


def test_output_in_unwritable_folder_is_exit_2_before_the_eval(tmp_path):
    prefix = _as_unprivileged()
    cache = tmp_path / "cache"
    cache.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, text = _cli(
            ["eval", MODEL_ID, "-t", "beir/SciFact", *TINY, "-o", str(locked / "new" / "r.json")],
            {"SIE_EVALS_CACHE_DIR": str(cache)},
            prefix,
        )
    finally:
        locked.chmod(0o755)
    assert code == 2, text
    assert f"-o {locked / 'new' / 'r.json'}: permission denied: this user cannot write in {locked}" in text
    assert list(locked.iterdir()) == [] and list(cache.iterdir()) == []


def test_report_files_are_what_write_report_writes(tmp_path):
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", *TINY, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert set(tmp_path.iterdir()) == set(report_files(out, ("local",), "quality", False))
    perf = report_files(out, ("local", "benchmark"), "perf", True)
    assert [p.name for p in perf] == [
        "r.json",
        "r.local.per_query.parquet",
        "r.local.latency.png",
        "r.local.saturation.png",
    ]


# ---------------------------------------------------------------- N77: --cache-dir holds the ONNX export


@pytest.mark.slow
def test_cache_dir_holds_the_onnx_export(tmp_path, monkeypatch):
    chosen, env_cache, home = tmp_path / "chosen", tmp_path / "env-cache", tmp_path / "home"
    env_cache.mkdir()
    home.mkdir()
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(env_cache))
    monkeypatch.setenv("HOME", str(home))  # the ~/.cache/sie-evals fallback
    args = ["eval", MODEL_ID, "-t", "beir/SciFact", *TINY, "-p", "onnx", "--cache-dir", str(chosen)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    exports = list((chosen / "exports").glob("*/model.onnx"))
    assert len(exports) == 1, sorted(_files(chosen))
    assert (chosen / "embeddings").is_dir()
    assert list(env_cache.iterdir()) == []
    # Nothing of ours under ~/.cache (ONNX Runtime keeps its own device id in ~/.cache/Microsoft: not a cache)
    assert not (home / ".cache" / "sie-evals").exists()
    assert os.environ["SIE_EVALS_CACHE_DIR"] == str(env_cache)  # the override ends with the command
