"""`runtime: auto` (the default profile of all-MiniLM-L6-v2): the fastest installed runtime whose vectors
pass the 1e-5 parity gate against torch, calibrated once per machine and cached; torch, with the reason,
when an exported runtime is not installed or fails the gate. Real model, real text, real runtimes."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sie_evals.lib.config.model_config import Runtime
from sie_evals.lib.config.weights import resolve_weights, weights_id
from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.engines.local import LocalEngine
from sie_evals.lib.engines.runtime_choice import RUNTIME_CACHE_ENV, decide, static_choice
from sie_evals.lib.gates.conditions import diff_conditions
from sie_evals_tests.conftest import MODEL_ID, REPO_ROOT, SCIFACT

SLICE = ["--limit-queries", "20", "--corpus-size", "300", "--no-progress", "--no-record"]


@pytest.fixture(scope="module")
def texts():
    with open(SCIFACT / "corpus.jsonl") as fh:
        docs = [json.loads(line)["text"] for line, _ in zip(fh, range(12), strict=False)]
    with open(SCIFACT / "queries.jsonl") as fh:
        return docs + [json.loads(line)["text"] for line, _ in zip(fh, range(4), strict=False)]


def test_decide_picks_the_fastest_runtime_that_passes_the_gate():
    seconds = {Runtime.torch: 2.0, Runtime.onnx: 1.5, Runtime.openvino: 1.0}
    exact = {Runtime.onnx: 2e-7, Runtime.openvino: 3e-7}
    assert decide(seconds, exact, {}, 1e-5)[0] == Runtime.openvino
    # the fastest one fails the gate: the next fastest that passes, never the inexact one
    runtime, reason = decide(seconds, {**exact, Runtime.openvino: 3e-3}, {Runtime.openvino: "fails the gate"}, 1e-5)
    assert runtime == Runtime.onnx and "openvino: fails the gate" in reason
    # torch is the fastest: it stays
    assert decide({**seconds, Runtime.torch: 0.5}, exact, {}, 1e-5)[0] == Runtime.torch
    runtime, reason = decide({Runtime.torch: 2.0}, {}, {Runtime.onnx: "onnxruntime is not installed"}, 1e-5)
    assert runtime == Runtime.torch and "fallback" in reason and "onnxruntime is not installed" in reason


def test_gpu_reduced_precision_and_non_dense_profiles_run_torch_without_calibrating(minilm):
    default = minilm.resolve_profile("default")
    assert default.runtime == Runtime.auto  # what the shipped config says
    assert static_choice(default, "cpu") is None  # the CPU calibrates
    assert static_choice(default, "cuda").runtime == Runtime.torch
    for name in ("bf16", "multivector"):  # they inherit auto from default
        profile = minilm.resolve_profile(name)
        assert profile.runtime == Runtime.auto and static_choice(profile, "cpu").runtime == Runtime.torch


def test_a_runtime_change_is_in_what_a_failed_check_diffs():
    changes = diff_conditions({"runtime": "torch", "engine": "local"}, {"runtime": "openvino", "engine": "local"})
    assert [str(c) for c in changes] == ["runtime torch -> openvino"]


@pytest.mark.slow
def test_auto_falls_back_to_torch_when_the_export_fails_the_parity_gate(minilm, texts, tmp_path, caplog, monkeypatch):
    """A real export whose weights were altered after the export's own check (what a faulty converter
    leaves): ONNX Runtime and OpenVINO both run it, both fail the gate, auto runs torch and says why."""
    import onnx
    from onnx import numpy_helper

    from sie_evals.lib.core.digests import file_sha256
    from sie_evals.lib.engines.export import META_FILE, ONNX_FILE, ensure_onnx_export

    profile = minilm.resolve_profile("default")
    made = ensure_onnx_export(  # the session's export (made once), copied: the copy is the one altered
        minilm, profile, resolve_weights(minilm), weights_id(minilm), Path(os.environ[RUNTIME_CACHE_ENV])
    )
    root = tmp_path / "runtime-cache"
    folder = root / "exports" / made.name
    shutil.copytree(made, folder)
    graph = onnx.load(str(folder / ONNX_FILE))
    # the last layer's output LayerNorm weight, 0.5 % off: vectors move by ~1e-3, far past 1e-5
    init = next(i for i in graph.graph.initializer if "layer.5.output.LayerNorm.weight" in i.name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.005), init.name))
    onnx.save(graph, str(folder / ONNX_FILE))
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "sha256": file_sha256(folder / ONNX_FILE)}))

    monkeypatch.setenv(RUNTIME_CACHE_ENV, str(root))
    with caplog.at_level(logging.WARNING), LocalEngine(minilm, profile, threads=2, batch_size=8) as engine:
        vectors = engine.embed(texts, EmbedKind.document)
        info = engine.info()
    choice = info.extra["runtime_choice"]
    assert info.extra["runtime"] == "torch" and choice["runtime"] == "torch"
    for runtime in ("onnx", "openvino"):
        assert choice["rejected"][runtime].startswith("fails the parity gate: max |delta|")
        assert choice["max_abs_delta"][runtime] > 1e-4
    assert "fallback" in choice["reason"]
    assert info.version.startswith("transformers ") and "export" not in info.extra
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("torch" in m and "fails the parity gate" in m for m in warned), warned
    torch_profile = profile.model_copy(update={"runtime": Runtime.torch})
    with LocalEngine(minilm, torch_profile, threads=2, batch_size=8) as reference:
        assert np.array_equal(vectors, reference.embed(texts, EmbedKind.document))
    # the choice is cached: a second engine reads it and does not calibrate again
    again = LocalEngine(minilm, profile, threads=2, batch_size=8).info().extra["runtime_choice"]
    assert again["calibrated"] == choice["calibrated"] and again["file"] == choice["file"]


BLOCKER = """
import sys
for name in ("onnxruntime", "openvino"):
    sys.modules[name] = None  # `import name` raises ImportError, as where the wheel is not installed
from sie_evals.cli import main
sys.argv = ["sie-bench", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_auto_falls_back_to_torch_when_the_exported_runtimes_are_not_installed(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, RUNTIME_CACHE_ENV: str(tmp_path / "runtime-cache"), "SIE_EVALS_CACHE_DIR": str(tmp_path)}
    args = ["eval", MODEL_ID, "-t", "beir/SciFact", "-s", "local", *SLICE, "--threads", "2", "-o", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conditions = json.loads(out.read_text())["sources"]["local"]["run_conditions"]
    choice = conditions["runtime_choice"]
    assert conditions["runtime"] == "torch" and choice["runtime"] == "torch"
    assert choice["rejected"]["onnx"].startswith("onnxruntime is not installed")
    assert choice["rejected"]["openvino"].startswith("openvino is not installed")
    assert conditions["engine_version"].startswith("transformers ")
    assert "runtime auto" in proc.stderr and "openvino is not installed" in proc.stderr, proc.stderr
    assert not (tmp_path / "runtime-cache" / "exports").exists()  # nothing exported for runtimes it cannot run


@pytest.mark.slow
def test_auto_picks_the_fastest_exact_runtime_and_records_it(tmp_path, monkeypatch):
    """Through the CLI with the default profile: the choice is the fastest of the runtimes that passed,
    recorded in the run conditions; the result stays keyed as `default`; metrics equal torch's."""
    from typer.testing import CliRunner

    from sie_evals.cli import app

    out = tmp_path / "default.json"
    result = CliRunner().invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", *SLICE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    local = json.loads(out.read_text())["sources"]["local"]
    conditions, choice = local["run_conditions"], local["run_conditions"]["runtime_choice"]
    exact = {r: s for r, s in choice["seconds"].items() if r == "torch" or choice["max_abs_delta"][r] <= 1e-5}
    assert conditions["runtime"] == choice["runtime"] == min(exact, key=exact.get)
    assert set(choice["seconds"]) == {"torch", "onnx", "openvino"} and choice["rejected"] == {}
    assert conditions["profile"] == "default" and local["result_key"]["profile"] == "default"
    expected_engine = {"torch": "transformers ", "onnx": "onnxruntime ", "openvino": "openvino "}[choice["runtime"]]
    assert conditions["engine_version"].startswith(expected_engine)
    # torch on the same slice: the same metrics to 5 decimals
    out = tmp_path / "torch.json"
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "model_configs", configs)
    cfg = configs / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    cfg.write_text(cfg.read_text().replace("    runtime: auto\n", "    runtime: torch\n", 1))
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs))
    result = CliRunner().invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", *SLICE, "-o", str(out)])
    assert result.exit_code == 0, result.output
    torch_local = json.loads(out.read_text())["sources"]["local"]
    assert torch_local["run_conditions"]["runtime"] == "torch"
    for name, value in torch_local["metrics"].items():
        assert round(local["metrics"][name], 5) == round(value, 5), name


def test_a_named_exported_runtime_that_is_not_installed_exits_2_naming_it(minilm, monkeypatch):
    """`-p onnx` where onnxruntime is missing: a ConfigError (exit 2) before any export work, not an ImportError."""
    from sie_evals.lib.core.errors import ConfigError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(ConfigError, match="runtime onnx needs onnxruntime, which is not installed"):
        LocalEngine(minilm, minilm.resolve_profile("onnx"), threads=2).start()


def test_saved_conditions_keep_the_choice_but_not_this_machines_cache_path():
    from sie_evals.lib.gates.conditions import summarize

    choice = {"runtime": "onnx", "reason": "the fastest exact runtime", "file": "/root/.cache/x/choice.json"}
    saved = summarize({"runtime": "onnx", "runtime_choice": choice})
    assert saved["runtime_choice"] == {"runtime": "onnx", "reason": "the fastest exact runtime"}
    assert summarize({"runtime": "torch"})["runtime_choice"] is None
