"""One path from settings to load shape (issue 23 item 3): every open-loop field is a settings field, so
SIE_EVALS_<FIELD> sets it for the CLI and the Dagster resource alike, through one builder (perf_plan);
and `sie-bench eval --help` shows the defaults and margins in force, generated, not restated."""

import json

import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.defs.evals.resources import EvalSettings
from sie_evals.lib.config.settings import DEFAULTS, EvalDefaults, env_var, eval_defaults, option_of, perf_plan
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.gates.thresholds import DEFAULT_MARGINS, Against
from sie_evals.lib.perf.sweep import Slo, Sweep
from sie_evals_tests import openai_server

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SLICE = ["--limit-queries", "20", "--corpus-size", "300"]
runner = CliRunner()

OPEN_LOOP_ENV = {
    "SIE_EVALS_PERF_RATE": "5",
    "SIE_EVALS_PERF_ARRIVAL": "gamma",
    "SIE_EVALS_PERF_BURSTINESS": "0.5",
    "SIE_EVALS_PERF_MAX_CONCURRENCY": "8",
    "SIE_EVALS_PERF_ON_CAP": "drop",
    "SIE_EVALS_PERF_SEED": "7",
    "SIE_EVALS_PERF_DURATION_S": "2",
    "SIE_EVALS_PERF_TOKENS": "32",
    "SIE_EVALS_PERF_SWEEP": "rate=5,10",
    "SIE_EVALS_PERF_SLOS": "p99_ms<=250, error_rate<=0.01",
}


def test_every_open_loop_field_is_a_setting_the_cli_and_dagster_build_alike(monkeypatch):
    for name, value in OPEN_LOOP_ENV.items():
        monkeypatch.setenv(name, value)
    cli = perf_plan(eval_defaults())
    assert cli == EvalSettings.from_env().perf_plan()  # the Dagster resource: the same plan
    load = cli.load
    assert (load.rate, load.arrival, load.burstiness, load.max_concurrency) == (5.0, "gamma", 0.5, 8)
    assert (load.on_cap, load.seed, load.duration_s, load.requests, load.tokens) == ("drop", 7, 2.0, None, 32)
    assert cli.sweep == Sweep("rate", (5.0, 10.0))
    assert cli.slos == (Slo("p99_ms", "<=", 250.0), Slo("error_rate", "<=", 0.01))
    # resource config (what the Dagster UI sets) goes through the same builder
    for name in OPEN_LOOP_ENV:
        monkeypatch.delenv(name)
    dagster = EvalSettings(perf_rate=20.0, perf_arrival="constant", perf_tokens="16,64").perf_plan()
    assert dagster.load.arrival == "constant" and dagster.sweep == Sweep("tokens", (16.0, 64.0))


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SIE_EVALS_PERF_ARRIVAL": "weibull"}, "--arrival (SIE_EVALS_PERF_ARRIVAL)"),
        ({"SIE_EVALS_PERF_SWEEP": "threads=1,2"}, "--sweep"),
        ({"SIE_EVALS_PERF_SLOS": "p99<=250"}, "--slo"),
        (
            {"SIE_EVALS_PERF_ARRIVAL": "gamma", "SIE_EVALS_PERF_BURSTINESS": "0"},
            "--burstiness (SIE_EVALS_PERF_BURSTINESS)",
        ),
        ({"SIE_EVALS_PERF_TOKENS": "32,abc"}, "--tokens (SIE_EVALS_PERF_TOKENS)"),
        ({"SIE_EVALS_PERF_MAX_CONCURRENCY": "0"}, "--max-concurrency (SIE_EVALS_PERF_MAX_CONCURRENCY)"),
    ],
)
def test_the_cli_reads_every_load_setting_from_the_environment(env, named, monkeypatch):
    """Each of these used to be ignored by `sie-bench eval` (only its option set it); a bad value is now
    exit 2 naming the option and the variable, before any server is contacted."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = ["eval", MODEL, "-t", "beir/SciFact", "--type", "perf", "-s", "openai", "--openai-url", "http://127.0.0.1:9"]
    res = runner.invoke(app, [*args, "--rate", "5", *SLICE])
    assert res.exit_code == 2, res.output
    assert named in " ".join(res.output.split()) and "Traceback" not in res.output


@pytest.mark.slow
def test_an_open_loop_sweep_with_slos_from_the_environment_runs(tmp_path, monkeypatch):
    """--arrival, --burstiness, --sweep and --slo from SIE_EVALS_* only, against a real server on 127.0.0.1."""
    env = {
        "SIE_EVALS_PERF_ARRIVAL": "gamma",
        "SIE_EVALS_PERF_BURSTINESS": "0.5",
        "SIE_EVALS_PERF_RATE": "20",
        "SIE_EVALS_PERF_SWEEP": "rate=20,40",
        "SIE_EVALS_PERF_SLOS": "p99_ms<=5000",
        "SIE_EVALS_PERF_REQUESTS": "20",
        "SIE_EVALS_PERF_WARMUP_REQUESTS": "2",
        "SIE_EVALS_PERF_TRIALS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "r.json"
    with openai_server.running(tmp_path / "server.log") as port:
        url = ["--openai-url", f"http://127.0.0.1:{port}"]
        args = ["eval", MODEL, "-t", "beir/SciFact", "--type", "perf", "-s", "openai", *url, *SLICE]
        res = runner.invoke(app, [*args, "-o", str(out), "--no-record"])
    assert res.exit_code == 0, res.output
    source = json.loads(out.read_text())["sources"]["openai"]
    shape = source["run_conditions"]["load_shape"]
    assert shape["mode"] == "open" and shape["arrival"] == "gamma" and shape["burstiness"] == 0.5
    assert source["run_conditions"]["sweep"] == {"param": "rate", "values": [20.0, 40.0]}
    assert "p99_ms<=5000" in json.dumps(source["slo"]) and "goodput_per_s" in source["metrics"]
    assert json.loads(out.read_text())["variant"].startswith("perf@corpus-b1-gamma0.5-m256-sweep-rate")


def test_eval_help_shows_the_defaults_and_margins_in_force():
    help_text = " ".join(runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "300"}).output.split())
    shown = [name for name in EvalDefaults.model_fields if option_of(name)]
    assert {"perf_arrival", "perf_burstiness", "perf_sweep", "perf_slos", "perf_concurrency"} <= set(shown)
    for name in shown:
        if name in ("batch_size", "perf_batch_size", "data_dir", "cache_dir"):  # one -b for both; paths' own
            continue
        default = "unset" if DEFAULTS[name] is None else DEFAULTS[name]
        assert f"Default: {default} (${env_var(name)})" in help_text, name
    for against in Against:
        margins = DEFAULT_MARGINS[against]
        assert all(f"{m:g} x the" in help_text or f"/ {m:g}" in help_text for m in margins.values()), against


@pytest.mark.slow
def test_perf_settings_leave_a_quality_eval_alone(tmp_path, monkeypatch):
    """A deployment's SIE_EVALS_PERF_SWEEP/SLOS shape perf evals only: a quality check still runs."""
    monkeypatch.setenv("SIE_EVALS_PERF_SWEEP", "rate=5,10")
    monkeypatch.setenv("SIE_EVALS_PERF_SLOS", "p99_ms<=250")
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["eval", MODEL, "-t", "beir/SciFact", *SLICE, "--check-targets", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["type"] == "quality" and not list(tmp_path.glob("*.png"))


def test_an_explicit_duration_wins_over_the_request_count_of_the_environment(monkeypatch):
    monkeypatch.setenv("SIE_EVALS_PERF_REQUESTS", "50")
    with pytest.raises(InputError, match="not both"):
        perf_plan(eval_defaults(perf_duration_s=1.0))
    monkeypatch.setenv("SIE_EVALS_PERF_DURATION_S", "1")  # both from the environment: which one is meant?
    args = ["eval", MODEL, "-t", "beir/SciFact", "--type", "perf", "-s", "openai", "--openai-url", "http://127.0.0.1:9"]
    res = runner.invoke(app, [*args, *SLICE])
    assert res.exit_code == 2 and "give --requests (SIE_EVALS_PERF_REQUESTS) or --duration" in res.output
    monkeypatch.delenv("SIE_EVALS_PERF_DURATION_S")
    res = runner.invoke(app, [*args, *SLICE, "--duration", "0.5", "--trials", "1", "--warmup", "0"])
    assert "not both" not in res.output and "Traceback" not in res.output, res.output
