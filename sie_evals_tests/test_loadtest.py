"""`sie-bench loadtest`: scenario validation (exit 2 naming the field), ramp/step schedules, and real
runs with the `local` source on a tiny slice: two profiles complete, and SIGINT (Ctrl-C) mid-profile
still writes what ran. (The acceptance run against a started SIE server is in the README.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.perf.openloop import schedule_for_rate_curve
from sie_evals.lib.perf.scenario import LoadProfile

REPO = Path(__file__).resolve().parents[1]
GOOD = """
name: t
task: beir/SciFact
workload: queries
data: {limit_queries: 20, corpus_size: 50}
models: [{model: sentence-transformers/all-MiniLM-L6-v2}]
sources: [local]
slos: ["p99_ms<=600000"]
profiles:
  - {name: a, pattern: constant, arrival: constant, rps: 4, duration_s: 3, warmup_s: 1, concurrency: 8}
  - {name: b, pattern: step, rps: 4, steps: [2, 6], duration_s: 3, concurrency: 8}
"""


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.replace("rps: 4, duration_s: 3, warmup_s: 1", "rps: 0, duration_s: 3, warmup_s: 1"), "profiles.0.rps"),
        (GOOD.replace("pattern: constant", "pattern: sine"), "profiles.0.pattern"),
        (GOOD.replace("steps: [2, 6], ", ""), "profiles.1"),
        (GOOD.replace("sources: [local]", "sources: [nope]"), "sources"),
        (GOOD.replace("concurrency: 8}\n  - {name: b", "concurency: 8}\n  - {name: b"), "profiles.0.concurency"),
        (GOOD.replace('slos: ["p99_ms<=600000"]', "slos: ['p99<=3']"), "slos"),
        (GOOD.replace("models: [{model", "models: [{model: x"), "line"),
        ("- just a list\n", "mapping"),
    ],
)
def test_bad_scenarios_exit_2_naming_the_field(tmp_path, text, field):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["loadtest", str(path), "-o", str(tmp_path / "out.json")])
    assert result.exit_code == 2, result.output
    assert field in result.output and "s.yaml" in result.output
    assert not (tmp_path / "out.json").exists()


def test_rate_curves_ramp_and_step():
    ramp = LoadProfile(name="r", pattern="ramp", start_rps=10, rps=50, duration_s=20)
    t, r = ramp.rate_curve()
    offsets = schedule_for_rate_curve(t, r, "constant")
    # a linear ramp 10 -> 50 req/s over 20 s sends (10 + 50) / 2 * 20 = 600 requests, denser at the end
    assert len(offsets) == pytest.approx(600, abs=2)
    assert (offsets < 10).sum() == pytest.approx(10 * 10 + 20 * 10 / 2, abs=2)
    step = LoadProfile(name="s", pattern="step", rps=1, steps=[5, 20], duration_s=10)
    offsets = schedule_for_rate_curve(*step.rate_curve(), "poisson", seed=1)
    first, second = (offsets < 5).sum(), (offsets >= 5).sum()
    assert 10 <= first <= 45 and 70 <= second <= 130
    assert step.target_at(1.0) == 5 and step.target_at(7.0) == 20
    assert np.all(np.diff(offsets) >= 0)


@pytest.mark.slow
def test_loadtest_runs_profiles_and_ctrl_c_writes_what_ran(tmp_path):
    """A real run (local engine, tiny slice): profile a (constant) completes and is on disk; profile b
    (steps, made long) is interrupted with SIGINT, which still writes a valid result with both
    profiles, b stopped early, interrupted=true and complete=false (not both), exit 130."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "SIE_EVALS_DATA_DIR": str(REPO.parent / "shared" / "data")}
    path = tmp_path / "s.yaml"
    path.write_text(GOOD.replace("steps: [2, 6], duration_s: 3", "steps: [2, 6], duration_s: 600"))
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "sie_evals.cli", "loadtest", str(path), "-o", str(out), "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # the file appears when profile a is done
        assert out.exists(), "profile a never finished"
        partial = json.loads(out.read_text())
        assert not partial["complete"] and [r["profile"]["name"] for r in partial["results"]] == ["a"]
        time.sleep(4)  # into profile b
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["interrupted"] is True and report["complete"] is False  # 13c: never both
    assert [r["profile"]["name"] for r in report["results"]] == ["a", "b"]
    a, b = report["results"]
    assert not a["stopped_early"] and b["stopped_early"]
    for r in (a, b):
        m = r["metrics"]
        assert m["completed"] + m["errors"] + m["dropped"] == m["scheduled"] and m["completed"] > 0
        assert r["latency_histogram_hdr"].startswith("HIST")
        assert m["slo_met"] == 1.0 and m["goodput_per_s"] > 0
    # profile a: a constant 4 req/s for 3 s after a 1 s warm-up that is not counted
    assert a["metrics"]["scheduled"] == 12
