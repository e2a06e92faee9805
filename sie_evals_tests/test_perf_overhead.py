"""The generator's own overhead (lib/perf/overhead.py) in every perf report and saved perf target, and
the warning when it is a large part of what was measured: here the server IS a null endpoint (as
fast as the calibration's), so every latency is the generator's own and the report must say so."""

import json

from ruamel.yaml import YAML
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.perf.overhead import OVERHEAD_WARN_FRACTION, null_endpoint, overhead_warnings
from sie_evals_tests.conftest import MODEL_ID
from sie_evals_tests.test_perf_vs_wrk import reply_json

SLICE = ["--limit-queries", "20", "--corpus-size", "300", "--no-progress", "--no-record"]
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"


def test_the_warning_appears_when_the_server_is_as_fast_as_the_null_endpoint(configs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    perf = [
        "--type",
        "perf",
        "--workload",
        "queries",
        "-c",
        "4",
        "--requests",
        "1000",
        "--warmup",
        "50",
        "--trials",
        "1",
    ]
    save = ["--output", str(tmp_path / "perf.json"), "--save-targets", "openai"]
    out = tmp_path / "perf.json"
    with null_endpoint(reply_json().encode()) as url:
        res = CliRunner().invoke(
            app,
            ["eval", MODEL_ID, "-t", "beir/SciFact", "-s", "openai", "--openai-url", url, *perf, *SLICE, *save],
        )
    assert res.exit_code == 0, res.output
    src = json.loads(out.read_text())["sources"]["openai"]
    overhead = src["run_conditions"]["generator_overhead"]
    assert overhead["p50_ms"] > 0 and overhead["p99_ms"] >= overhead["p50_ms"] and "null endpoint" in overhead["method"]
    assert src["run_conditions"]["generator"] == "fast"  # plain http://: the fast client (aio.client_of)
    assert src["metrics"]["generator_overhead_p50_ms"] == overhead["p50_ms"]
    warned = [w for w in src["warnings"] if w.startswith("generator overhead")]
    assert warned, src["warnings"]
    assert "generator overhead p50" in res.output and "generator overhead:" in res.output  # console: line, warning
    # the saved target records it in its run conditions
    saved = YAML(typ="safe").load((configs_dir / CONFIG_NAME).read_text())
    entry = saved["targets"]["beir/SciFact"]["default"][json.loads(out.read_text())["variant"]]
    assert entry["conditions"]["generator_overhead"]["p50_ms"] == overhead["p50_ms"]


def test_no_warning_while_the_overhead_is_a_small_part():
    overhead = {"p50_ms": 0.2, "p99_ms": 1.0}
    assert overhead_warnings(overhead, {"latency_p50_ms": 10.0, "latency_p99_ms": 30.0}) == []
    # above the fraction at p99 only: one warning, naming p99 and both numbers
    p99_only = overhead_warnings(overhead, {"latency_p50_ms": 10.0, "latency_p99_ms": 1.0 / OVERHEAD_WARN_FRACTION - 1})
    assert len(p99_only) == 1 and "at p99" in p99_only[0] and "1.000 ms" in p99_only[0]
