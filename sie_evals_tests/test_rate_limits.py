"""Rates, durations and schedule memory (issue 22 item 3: N35, N36, N55, N56, N59): absurd values are
exit 2 naming the option or scenario field with the allowed range; the arrival schedule is lazy, so
memory does not grow with rate x duration, and it draws exactly the times the old eager one did; an
open-loop trial at 100,000 requests/s offered against a loopback server stays small and reports what
the generator achieved."""

import json
import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.core.names import validate_name
from sie_evals.lib.perf.limits import MAX_RATE_PER_S
from sie_evals.lib.perf.load import LoadSpec
from sie_evals.lib.perf.openloop import arrival_chunks, arrival_schedule, rate_curve_chunks, schedule_for_rate_curve
from sie_evals.lib.perf.scenario import LoadProfile

M = "sentence-transformers/all-MiniLM-L6-v2"


def eager_arrival_schedule(rate, arrival, *, requests=None, duration_s=None, burstiness=1.0, seed=0):
    """The schedule as it was generated before it became lazy (checkout 6447a26), verbatim."""
    rng = np.random.default_rng(seed)
    mean_gap = 1.0 / rate
    expected = (duration_s or 0.0) * rate
    n = requests if requests is not None else int(expected * 1.5 + 10 * math.sqrt(expected) + 10)

    def gaps(k):
        if arrival == "constant":
            return np.full(k, mean_gap)
        if arrival == "poisson":
            return rng.exponential(mean_gap, k)
        return rng.gamma(burstiness, mean_gap / burstiness, k)

    offsets = np.concatenate([[0.0], np.cumsum(gaps(n - 1))]) if n > 1 else np.zeros(1)
    if duration_s is not None:
        while offsets[-1] < duration_s:
            offsets = np.concatenate([offsets, offsets[-1] + np.cumsum(gaps(n))])
        offsets = offsets[offsets < duration_s]
    return offsets


def eager_rate_curve(times_s, rates, arrival, *, burstiness=1.0, seed=0):
    """schedule_for_rate_curve before it became lazy (checkout 6447a26), verbatim."""
    times_s, rates = np.asarray(times_s, dtype=float), np.asarray(rates, dtype=float)
    cumulative = np.concatenate([[0.0], np.cumsum(np.diff(times_s) * rates[:-1])])
    total = cumulative[-1]
    rng = np.random.default_rng(seed)
    n = int(total * 1.5 + 10 * math.sqrt(total) + 10)
    if arrival == "constant":
        unit = np.arange(n, dtype=float)
    else:
        gaps = rng.exponential(1.0, n - 1) if arrival == "poisson" else rng.gamma(burstiness, 1 / burstiness, n - 1)
        unit = np.concatenate([[0.0], np.cumsum(gaps)])
    unit = unit[unit < total]
    return np.interp(unit, cumulative, times_s)


@pytest.mark.parametrize("arrival", ["constant", "poisson", "gamma"])
@pytest.mark.parametrize("size", [{"requests": 1}, {"requests": 4096}, {"requests": 10_001}, {"duration_s": 7.3}])
def test_lazy_schedule_is_the_eager_one_draw_for_draw(arrival, size):
    """Many chunks (4096 offsets each) give exactly the old single-array schedule: same draws, same
    additions, bit for bit."""
    kwargs = {"burstiness": 0.4, "seed": 11, **size}
    lazy = arrival_schedule(1500.0, arrival, **kwargs)
    assert np.array_equal(lazy, eager_arrival_schedule(1500.0, arrival, **kwargs))
    assert len(lazy) > 10_000 or "requests" in size


@pytest.mark.parametrize("arrival", ["constant", "poisson", "gamma"])
def test_lazy_rate_curve_is_the_eager_one(arrival):
    ramp = LoadProfile(name="r", pattern="ramp", start_rps=100, rps=3000, duration_s=9)
    step = LoadProfile(name="s", pattern="step", rps=1, steps=[500, 4000, 50], duration_s=6)
    for p in (ramp, step):
        lazy = schedule_for_rate_curve(*p.rate_curve(), arrival, burstiness=2.5, seed=5)
        assert len(lazy) > 4096 and np.array_equal(
            lazy, eager_rate_curve(*p.rate_curve(), arrival, burstiness=2.5, seed=5)
        )


def test_schedule_memory_does_not_grow_with_rate_x_duration():
    """A million requests/s for 30 s is 3e7 offsets, 240 MB as one array (the eager schedule drew 1.5x
    that). Walked lazily, the peak is a few chunks."""
    for chunks in (
        arrival_chunks(MAX_RATE_PER_S, "poisson", duration_s=30.0, seed=1),
        rate_curve_chunks(np.array([0.0, 30.0]), np.array([MAX_RATE_PER_S] * 2), "gamma", burstiness=0.5),
    ):
        tracemalloc.start()
        try:
            count, last = 0, 0.0
            for c in chunks:
                count, last = count + len(c), float(c[-1])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert count == pytest.approx(3e7, rel=0.01) and 29.9 < last < 30.0
        assert peak < 2_000_000, f"peak {peak / 1e6:.1f} MB while walking the schedule"


@pytest.mark.parametrize("rate", [0.001, 0.5, 25.0, 123456.789, 999_999.0, MAX_RATE_PER_S])
def test_every_accepted_rate_makes_a_valid_load_shape_key(rate):
    """N35: the key `corpus-b1-poisson-r1e+09-m256` was not a valid name for any rate >= 1e6."""
    spec = LoadSpec(rate=rate, arrival="gamma", burstiness=0.25, on_cap="drop", tokens=512, batch_size=64)
    validate_name("load shape", spec.shape_key("queries"))
    assert LoadSpec(rate=MAX_RATE_PER_S).shape_key() == "corpus-b1-poisson-r1e06-m256"
    assert LoadSpec(rate=25.0).shape_key() == "corpus-b1-poisson-r25-m256"  # historical keys unchanged


@pytest.mark.parametrize(
    ("args", "option", "bound"),
    [
        (["--rate", "1e9", "--duration", "100"], "--rate", "1,000,000 requests/s"),  # N35
        (["--rate", "inf"], "--rate", "1,000,000 requests/s"),  # N55
        (["--rate", "nan"], "--rate", "1,000,000 requests/s"),
        (["--rate", "0.00001"], "--rate", "from 0.001"),
        (["--rate", "999999", "--duration", "100000"], "--duration", "86,400 s"),  # N36: was a 1 TiB array
        (["--rate", "5", "--duration", "inf"], "--duration", "86,400 s"),
        (["--duration", "1e300"], "--duration", "86,400 s"),
        (["--rate", "5", "--max-concurrency", "100000"], "--max-concurrency", "1 to 1024"),
        (["--sweep", "rate=10,1e7"], "--sweep rate=1e+07", "1,000,000 requests/s"),
    ],
)
def test_absurd_rates_and_durations_exit_2_naming_the_option(args, option, bound):
    result = CliRunner().invoke(
        app,
        [
            "eval",
            M,
            "-t",
            "beir/SciFact",
            "--type",
            "perf",
            "-s",
            "openai",
            "--openai-url",
            "http://127.0.0.1:9",
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    assert option in result.output and bound in result.output, result.output
    assert "Traceback" not in result.output and "load shape" not in result.output


SCENARIO = """name: t
task: beir/SciFact
workload: queries
data: {limit_queries: 20, corpus_size: 50}
models:
  - model: sentence-transformers/all-MiniLM-L6-v2
sources: [openai]
profiles:
  - name: steady
    pattern: constant
    rps: 2
    duration_s: 2
    concurrency: 4
"""


@pytest.mark.parametrize(
    ("old", "new", "field", "bound"),
    [
        ("rps: 2", "rps: .inf", "profiles.0.rps", "1,000,000 requests/s"),  # N55
        ("rps: 2", "rps: 1e9", "profiles.0.rps", "1,000,000 requests/s"),  # N56: was a 22 GiB array
        ("rps: 2", "rps: .nan", "profiles.0.rps", "1,000,000 requests/s"),
        ("rps: 2", "rps: -4", "profiles.0.rps", "from 0.001"),
        ("pattern: constant", "pattern: step\n    steps: [5, .inf]", "profiles.0.steps", "step 1"),
        ("pattern: constant", "pattern: ramp\n    start_rps: 1e12", "profiles.0.start_rps", "1,000,000"),
        ("duration_s: 2", "duration_s: 1e6", "profiles.0.duration_s", "86,400 s"),
        ("duration_s: 2", "duration_s: 2\n    warmup_s: .inf", "profiles.0.warmup_s", "86,400 s"),
        ("concurrency: 4", "concurrency: 1000000", "profiles.0.concurrency", "1 to 1024"),
        ("concurrency: 4", "concurrency: 4\n    burstiness: .inf", "profiles.0.burstiness", "finite"),
    ],
)
def test_absurd_scenario_values_exit_2_naming_file_and_field(tmp_path, old, new, field, bound):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.replace(old, new))
    result = CliRunner().invoke(app, ["loadtest", str(path), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and field in result.output and bound in result.output, result.output
    assert not (tmp_path / "o.json").exists()


def test_non_utf8_scenario_exit_2_naming_file_line_and_byte(tmp_path):
    """N59: was a UnicodeDecodeError traceback."""
    path = tmp_path / "s.yaml"
    path.write_bytes(SCENARIO.encode() + b"# caf\xe9\n")
    result = CliRunner().invoke(app, ["loadtest", str(path), "-o", str(tmp_path / "o.json")])
    assert result.exit_code == 2, result.output
    assert f"{path}:14:6" in result.output and "0xe9" in result.output and "UTF-8" in result.output
    assert not (tmp_path / "o.json").exists()


PROBE = r"""
import json, sys, time
from sie_evals_tests import loopback
from sie_evals.lib.perf.load import LoadSpec, run_load

def peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

with loopback.delay_server(0.0) as port:
    send = loopback.http_sender(port)
    # threads and connections up before the baseline: only the trial's own memory is measured
    run_load(send, ["x"], [1], LoadSpec(rate=500, requests=200, warmup_requests=0, trials=1, max_concurrency=64))
    before = peak_rss_mb()
    t0 = time.perf_counter()
    spec = LoadSpec(rate=100_000, requests=None, duration_s=float(sys.argv[1]), arrival="poisson", on_cap="drop",
                    warmup_requests=0, trials=1, max_concurrency=64)
    trial = run_load(send, ["x"], [1], spec).trials[0]
    wall = time.perf_counter() - t0
    after = peak_rss_mb()
print(json.dumps({"rss_growth_mb": after - before, "wall_s": wall, **trial.metrics()}))
"""


def test_open_loop_at_100k_per_s_offered_stays_small_and_reports_what_it_achieved():
    """100,000 requests/s offered for 2 s (200,000 scheduled) against a loopback server on this
    2-core VM: it cannot keep up, and must say so (dropped at the cap, achieved rate, send lag)
    without crashing or holding the schedule. The eager generator's arrays (schedule, per-request
    records, batches) grew the peak RSS by ~50 MB at 3 s; now only the completed requests are kept."""
    duration = 2.0
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(duration)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout)
    print(
        f"offered {m['offered_rate_per_s']:.0f}/s, achieved {m['requests_per_s']:.0f}/s, scheduled "
        f"{m['scheduled']:.0f}, completed {m['completed']:.0f}, dropped {m['dropped']:.0f} (at end "
        f"{m['dropped_at_end']:.0f}), late {m['late']:.0f}, send lag p99 {m['send_lag_p99_ms']:.1f} ms, "
        f"peak RSS +{m['rss_growth_mb']:.1f} MB, wall {m['wall_s']:.1f} s"
    )
    assert m["offered_rate_per_s"] == pytest.approx(100_000, rel=0.02)
    assert m["scheduled"] == pytest.approx(100_000 * duration, rel=0.02)
    assert m["completed"] > 0 and m["errors"] == 0 and m["late"] == 0
    assert m["completed"] + m["dropped"] == m["scheduled"] and m["dropped"] > 0.5 * m["scheduled"]
    assert 0 < m["requests_per_s"] < 100_000
    # the deadline bounds the run whatever the generator managed (duration + 1 s grace + lead-in)
    assert m["wall_s"] < duration + 1.5 + 1.0
    assert m["rss_growth_mb"] < 20, m
