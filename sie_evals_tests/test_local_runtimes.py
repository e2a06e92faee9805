"""The local engine's runtimes (torch, ONNX Runtime, OpenVINO on the cached ONNX export) and devices,
on real SciFact text with the real model."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import Dtype, Runtime, parse_model_config
from sie_evals.lib.core.errors import ConfigError, InputError
from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.engines.local import LocalEngine
from sie_evals_tests.conftest import MODEL_ID, REPO_ROOT, SCIFACT, required_everything

SLICE = ["--limit-queries", "5", "--corpus-size", "40", "--no-progress", "--no-record"]


@pytest.fixture(scope="module")
def texts():
    """Real SciFact abstracts (many truncated at 256 tokens) and short queries: padded batches."""
    with open(SCIFACT / "corpus.jsonl") as fh:
        docs = [json.loads(line)["text"] for line, _ in zip(fh, range(24), strict=False)]
    with open(SCIFACT / "queries.jsonl") as fh:
        queries = [json.loads(line)["text"] for line, _ in zip(fh, range(8), strict=False)]
    return docs + queries


@pytest.fixture(scope="module")
def torch_vectors(minilm, texts):
    with LocalEngine(minilm, minilm.resolve_profile("default"), threads=2, batch_size=8) as engine:
        return engine.embed(texts, EmbedKind.document)


@pytest.mark.parametrize("profile", ["onnx", "openvino"])
def test_exported_runtimes_match_torch_within_1e_5(minilm, texts, torch_vectors, profile):
    engine = LocalEngine(minilm, minilm.resolve_profile(profile), threads=2, batch_size=8)
    assert engine.profile.runtime == Runtime(profile)
    with engine:
        vectors = engine.embed(texts, EmbedKind.document)
        export = engine.export_dir
        info = engine.info()
    assert np.abs(vectors - torch_vectors).max() <= 1e-5
    # OpenVINO runs one single-threaded stream per thread, batches in parallel (ONNX Runtime: one session)
    assert info.extra["workers"] == (2 if profile == "openvino" else 1)
    assert info.extra["runtime"] == profile and ("onnxruntime" if profile == "onnx" else "openvino") in info.version
    # exported once: a second engine finds the same verified folder and does not export again
    meta = json.loads((export / "export.json").read_text())
    assert meta["model_revision"] == minilm.revision and meta["probe_max_abs_delta"] <= 1e-5
    mtime = (export / "model.onnx").stat().st_mtime_ns
    with LocalEngine(minilm, minilm.resolve_profile(profile), threads=2) as again:
        again.start()
        assert again.export_dir == export and (export / "model.onnx").stat().st_mtime_ns == mtime


def test_devices_cpu_auto_and_two_data_parallel_workers_are_identical(minilm, texts, torch_vectors):
    profile = minilm.resolve_profile("default")
    for device in ("cpu", "auto"):
        with LocalEngine(minilm, profile, threads=2, batch_size=8, device=device) as engine:
            assert engine.devices == ["cpu"]  # no GPU here: auto resolves to the CPU
            assert np.array_equal(engine.embed(texts, EmbedKind.document), torch_vectors)
    # Two workers on two "devices" (both the CPU here; GPUs on a multi-GPU machine) embed the same
    # length-sorted batches between them: bit-identical to one device.
    with LocalEngine(minilm, profile, threads=2, batch_size=8, device="cpu,cpu") as engine:
        engine.start()
        assert engine.devices == ["cpu", "cpu"] and len(engine._workers) == 2
        assert np.array_equal(engine.embed(texts, EmbedKind.document), torch_vectors)
        assert engine.forward_calls == -(-len(texts) // 8)


def test_cuda_without_a_gpu_and_unknown_devices_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: benchmarks/gpu_check.sh covers it")
    for device, needle in (("cuda", "no CUDA GPU is available"), ("cuda:1", "no CUDA GPU"), ("tpu", "unknown device")):
        result = CliRunner().invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", "--device", device, *SLICE])
        assert result.exit_code == 2, result.output
        assert needle in result.output


def test_unknown_runtime_or_device_in_a_config_names_the_field(minilm):
    data = json.loads(minilm.model_dump_json(exclude_none=True))
    for field, value in (("runtime", "tensorrt"), ("device", "gpu0")):
        bad = json.loads(json.dumps(data))
        bad["profiles"]["broken"] = {field: value}
        with pytest.raises(ConfigError, match=f"profiles.broken.{field}"):
            parse_model_config(bad, REPO_ROOT / "model_configs" / "x.yaml")
    bf16_onnx = minilm.resolve_profile("onnx").model_copy(update={"dtype": Dtype.bfloat16})
    with pytest.raises(ConfigError, match="float32 ONNX export"):
        LocalEngine(minilm, bf16_onnx).start()
    with pytest.raises(InputError, match="unknown device"):
        LocalEngine(minilm, minilm.resolve_profile("default"), device="npu")


def test_a_failing_export_exits_2_and_leaves_nothing(monkeypatch, tmp_path):
    import torch

    cache = tmp_path / "cache"
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(cache))

    def broken_export(*args, **kwargs):  # what an unsupported operator or a full disk looks like
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    result = CliRunner().invoke(app, ["eval", MODEL_ID, "-t", "beir/SciFact", "-p", "onnx", *SLICE])
    assert result.exit_code == 2, result.output
    assert "exporting sentence-transformers/all-MiniLM-L6-v2 to ONNX" in result.output and "frobnicate" in result.output
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no export, no half-written folder, no vectors


def test_run_conditions_record_the_gpu_fields():
    from sie_evals.lib.core.run_conditions import hardware

    gpu = hardware()["gpu"]
    assert isinstance(gpu["count"], int)
    if gpu["count"]:
        assert {"devices", "driver", "cuda"} <= set(gpu) and gpu["devices"][0]["memory_gib"] > 0


def test_fastembed_runs_the_export_offline_and_matches_torch(minilm, texts, torch_vectors):
    # fastembed is not in pyproject (its huggingface-hub pin would replace transformers' one): scripts/bootstrap.sh
    # installs it with --no-deps, so under CI it must be there; elsewhere the test skips without it.
    if required_everything():
        import fastembed  # noqa: F401
    else:
        pytest.importorskip("fastembed")
    from sie_evals.lib.engines import create_engine

    with create_engine("fastembed", minilm, minilm.resolve_profile("default"), threads=2, batch_size=8) as engine:
        vectors = engine.embed(texts, EmbedKind.document)
    assert np.abs(vectors - torch_vectors).max() <= 1e-5
    assert engine.info().version.startswith("fastembed ")
