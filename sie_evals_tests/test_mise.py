"""`mise run eval ...` forwards every argument to `sie-bench eval` verbatim (issue 17, point 1), with the
real mise (installed by scripts/bootstrap.sh from npm) on the real mise.toml and task files; only the
callee is a stand-in that prints its argv, so no model runs. The full command is run from a fresh
clone by hand (see docs/setup.md)."""

import json
import os
import shutil
import subprocess

import pytest

from sie_evals_tests.conftest import REPO_ROOT, required_everything

MISE = shutil.which("mise")
pytestmark = pytest.mark.skipif(
    not MISE and not required_everything(), reason="mise not installed (scripts/bootstrap.sh installs it)"
)

ARGV_PRINTER = """#!/usr/bin/env python3
import json, os, sys
env = os.environ.get
out = {"argv": sys.argv[1:], "cwd": os.getcwd()}
print(json.dumps(out | {"data": env("SIE_EVALS_DATA_DIR"), "offline": env("HF_HUB_OFFLINE")}))
"""


@pytest.fixture
def project(tmp_path):
    """The repo's mise.toml and mise-tasks/, a no-op bootstrap and an argv-printing sie-bench."""
    assert MISE, "mise is not on PATH: run scripts/bootstrap.sh"
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "mise-tasks", root / "mise-tasks")
    shutil.copy(REPO_ROOT / "mise.toml", root / "mise.toml")
    (root / "scripts").mkdir()
    (root / "scripts" / "bootstrap.sh").write_text("exit 0\n")
    (root / ".venv" / "bin").mkdir(parents=True)
    fake = root / ".venv" / "bin" / "sie-bench"
    fake.write_text(ARGV_PRINTER)
    fake.chmod(0o755)
    subprocess.run([MISE, "trust", "--quiet", str(root / "mise.toml")], check=True, capture_output=True)
    return root


def _mise(cwd, *args, env=None):
    env = {k: v for k, v in os.environ.items() if k not in ("SIE_EVALS_DATA_DIR", "HF_HUB_OFFLINE")} | (env or {})
    res = subprocess.run([MISE, "run", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_eval_forwards_every_argument_verbatim(project):
    args = ["sentence-transformers/all-MiniLM-L6-v2", "-t", "beir/SciFact", "--type", "quality"]
    args += ["-s", "local,benchmark", "--limit-queries", "20", "--corpus-size", "300", "-o", "a b.json", "-C", "x"]
    out = _mise(project, "eval", *args)
    assert out["argv"] == ["eval", *args]
    assert out["data"] == str(project / ".." / "shared" / "data") and out["offline"] == "1"


def test_eval_runs_in_the_callers_directory_and_keeps_the_callers_settings(project):
    sub = project / "sub"
    sub.mkdir()
    out = _mise(sub, "eval", "-o", "r.json", env={"SIE_EVALS_DATA_DIR": "/data", "HF_HUB_OFFLINE": "0"})
    assert out["cwd"] == str(sub) and out["argv"] == ["eval", "-o", "r.json"]
    assert out["data"] == "/data" and out["offline"] == "0"


def test_ui_forwards_its_arguments(project):
    assert _mise(project, "ui", "--port", "3999")["argv"] == ["ui", "--port", "3999"]
