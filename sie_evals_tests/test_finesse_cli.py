"""The Finesse run of docs/finesse.md end to end through the `finesse` console script, and tampering detection."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sie_evals_tests.conftest import SCIFACT

FINESSE = str(Path(sys.executable).parent / "finesse")


def run(*args, cwd, env=None, ok=True):
    proc = subprocess.run(
        [FINESSE, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=900
    )
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_readme_run_end_to_end(tmp_path):
    """init -> generate (native, all-MiniLM-L6-v2, SciFact corpus, lengths 4-8, 32 tokens) -> score -> checksum
    -> verify; then a one-byte edit, a forged score with a recomputed plain hash, and a swapped embeddings file."""
    key = {"FINESSE_HMAC_KEY": "test-key-1"}
    run("init", "--output", "bench.yaml", cwd=tmp_path)
    run(
        "generate", "--config", "bench.yaml", "--output", "results", "--samples", "2", "--threads", "1",
        "--dataset-path", str(SCIFACT / "corpus.jsonl"), cwd=tmp_path,
    )  # fmt: skip
    (pt,) = (tmp_path / "results").glob("embeddings_native_mode_rss_*.safetensors")
    out = run("score", "--pt-path", str(pt), "--output", "results", cwd=tmp_path, env=key).stdout
    assert "average_rss (sum, q1q3)" in out and "L=8: skipped" in out
    results_path = tmp_path / "results" / "benchmark_results.json"
    results = json.loads(results_path.read_text())
    assert results["final_formula"] == "sum" and results["signature"]
    assert sorted(results["length_scores"]) == ["4", "5", "6", "7"] and list(results["skipped_lengths"]) == ["8"]
    assert "test-key-1" not in results_path.read_text()
    js = ["--json-path", str(results_path)]
    run("checksum", *js, cwd=tmp_path, env=key)
    run("verify", *js, "--pt-path", str(pt), cwd=tmp_path, env=key)
    model_dir = results["metadata"]["models"]["native"]["weights"]
    assert model_dir.startswith("package:")

    # one byte changed in the results: checksum names the content hash, exit 1
    text = results_path.read_text()
    edited = tmp_path / "edited.json"
    i = text.index('"average_rss": ') + len('"average_rss": ')
    edited.write_text(text[:i] + ("9" if text[i] != "9" else "8") + text[i + 1 :])
    proc = run("checksum", "--json-path", str(edited), cwd=tmp_path, env=key, ok=False)
    assert proc.returncode == 1 and "content_hash" in proc.stderr

    # forged score + recomputed plain hash: passes the plain hash, fails the signature and the re-score
    from sie_evals.finesse import hashing as hs

    forged = {**results, "average_rss": 999.0}
    forged["content_hash"] = hs.content_hash(forged)
    forged_path = tmp_path / "forged.json"
    forged_path.write_text(json.dumps(forged))
    proc = run("checksum", "--json-path", str(forged_path), cwd=tmp_path, env=key, ok=False)
    assert proc.returncode == 1 and "signature" in proc.stderr and "content_hash" not in proc.stderr
    proc = run("verify", "--json-path", str(forged_path), "--pt-path", str(pt), cwd=tmp_path, env=key, ok=False)
    assert proc.returncode == 1 and "average_rss" in proc.stderr

    # the embeddings file changed by one byte: verify names the file hash
    blob = bytearray(pt.read_bytes())
    blob[-3] ^= 1
    other = tmp_path / "other.safetensors"
    other.write_bytes(bytes(blob))
    proc = run("verify", *js, "--pt-path", str(other), cwd=tmp_path, env=key, ok=False)
    assert proc.returncode == 1 and "embeddings_file.sha256" in proc.stderr

    # checksum --model-path: the model folder the run used hashes to the stored model hash
    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.config.weights import resolve_weights

    folder = resolve_weights(find_model_config("all-MiniLM-L6-v2"))
    run("checksum", *js, "--model-path", folder, cwd=tmp_path, env=key)
    proc = run("checksum", *js, "--model-path", str(SCIFACT), cwd=tmp_path, env=key, ok=False)
    assert proc.returncode == 1 and "model_hash" in proc.stderr


def test_bad_inputs_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("metric: rss\ndatasets: []\ntokper_sample: 500\n")
    proc = run("generate", "--config", str(bad), cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "tokper_sample" in proc.stderr
    (tmp_path / "r.json").write_text("{not json")
    proc = run("checksum", "--json-path", str(tmp_path / "r.json"), cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_legacy_results_checksum(tmp_path):
    """A results file in finesse-benchmark's own format is checked with its legacy hash."""
    from sie_evals.finesse import hashing as hs

    legacy = {"config": {"mode": "native_mode"}, "average_rss": 12.5, "length_scores": {"4": {"rss_scores": [12.5]}}}
    legacy["content_hash"] = ""
    legacy["content_hash"] = hs.legacy_content_hash(legacy)
    path = tmp_path / "benchmark_results.json"
    path.write_text(json.dumps(legacy))
    assert "legacy" in run("checksum", "--json-path", str(path), cwd=tmp_path).stdout
    path.write_text(json.dumps({**legacy, "average_rss": 13.0}))
    assert run("checksum", "--json-path", str(path), cwd=tmp_path, ok=False).returncode == 1


def _invoke(*args: str):
    """The finesse command in-process (same exit codes and messages, no fresh interpreter per call)."""
    from typer.testing import CliRunner

    from sie_evals.finesse.cli import app

    return CliRunner().invoke(app, list(args))


def test_signature_cannot_be_removed_with_a_key_set(tmp_path, monkeypatch):
    """Signature downgrade: delete hash_scheme + signature, edit the score, recompute the unkeyed legacy hash.
    With FINESSE_HMAC_KEY set that must fail; a legacy file is only accepted with an explicit --legacy."""
    from sie_evals.finesse import hashing as hs

    monkeypatch.setenv("FINESSE_HMAC_KEY", "test-key-2")
    signed = hs.seal({"config": {"mode": "native_mode"}, "average_rss": 12.5, "length_scores": {"4": {}}})
    assert signed["signature"]
    good = tmp_path / "signed.json"
    good.write_text(json.dumps(signed))
    assert _invoke("checksum", "--json-path", str(good)).exit_code == 0

    downgraded = {k: v for k, v in signed.items() if k not in ("hash_scheme", "signature")}
    downgraded["average_rss"] = 999.0
    downgraded["content_hash"] = ""
    downgraded["content_hash"] = hs.legacy_content_hash(downgraded)
    bad = tmp_path / "downgraded.json"
    bad.write_text(json.dumps(downgraded))
    result = _invoke("checksum", "--json-path", str(bad))
    assert result.exit_code == 1 and "signature" in result.output and "--legacy" in result.output
    # explicitly a legacy file: its (unkeyed) legacy hash is what is checked, and the output says so
    result = _invoke("checksum", "--json-path", str(bad), "--legacy")
    assert result.exit_code == 0 and "legacy" in result.output


def test_checksum_of_a_non_utf8_file_is_bad_input(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b'{"content_hash": "\xff\xfe"}')
    result = _invoke("checksum", "--json-path", str(path))
    assert result.exit_code == 2 and "UTF-8" in result.output and path.name in result.output


def _srs_yaml(tmp_path, **probe) -> str:
    from ruamel.yaml import YAML

    from sie_evals_tests.test_finesse_oracle import LEADERBOARD_LIKE

    cfg = {
        "metric": "srs",
        "formula": "q2q2",
        "mode": "native_mode",
        "models": {"native_embedder": {"name": "sentence-transformers/all-MiniLM-L6-v2"}},
        "datasets": LEADERBOARD_LIKE,
        "probe_config": {"sequence_length": {"min": 4, "max": 4}, "samples_per_length": 1, "token_per_sample": 16,
                         "group_amount": 2, **probe},
        "advanced": {"threads": 1},
    }  # fmt: skip
    path = tmp_path / "srs.yaml"
    with open(path, "w") as fh:
        YAML(typ="safe", pure=True).dump(cfg, fh)
    return str(path)


@pytest.mark.slow
def test_srs_leaderboard_sampler_offline_end_to_end(tmp_path):
    """The leaderboard-style config (hub dataset, data_files wildcard + data_dir) run offline from a local copy
    of the repo layout, with 0.18.9's sampler and the real model: SRS generate -> score -> checksum -> verify."""
    from sie_evals_tests.test_finesse_oracle import _hf_layout

    _hf_layout(tmp_path / "CulturaX")
    key = {"FINESSE_HMAC_KEY": "k3"}
    run("generate", "--config", _srs_yaml(tmp_path), "--dataset-path", str(tmp_path / "CulturaX"),
        "--sampler", "finesse-0.18.9", "--output", "res", "--no-progress", cwd=tmp_path)  # fmt: skip
    (pt,) = (tmp_path / "res").glob("embeddings_native_mode_srs_*.safetensors")
    out = run("score", "--pt-path", str(pt), "--output", "res", cwd=tmp_path, env=key).stdout
    assert "average_srs (q2q2)" in out and "average_pbi" in out
    results = json.loads((tmp_path / "res" / "benchmark_results.json").read_text())
    assert results["sampler"] == "finesse-0.18.9" and results["metric"] == "srs" and results["signature"]
    assert results["metadata"]["sampler"]["name"] == "finesse-0.18.9"
    assert [len(s) for s in results["length_scores"]["4"]["sample_results"][0].values()] == [3, 2]  # p=2, 3
    js = ["--json-path", str(tmp_path / "res" / "benchmark_results.json")]
    run("checksum", *js, cwd=tmp_path, env=key)
    run("verify", *js, "--pt-path", str(pt), cwd=tmp_path, env=key)


def test_srs_and_dataset_path_bad_inputs_exit_2(tmp_path):
    from typer.testing import CliRunner

    from sie_evals.finesse.cli import app
    from sie_evals_tests.test_finesse_oracle import _hf_layout

    def gen(*args):  # in-process: the same command and exit codes, without a fresh interpreter per case
        result = CliRunner().invoke(app, ["generate", *args, "--output", str(tmp_path / "res"), "--no-progress"])
        assert result.exit_code == 2, result.output
        return result.output

    short = _srs_yaml(tmp_path, sequence_length={"min": 2, "max": 4})
    assert "sequence_length.min" in gen("--config", short)
    (tmp_path / "empty").mkdir()
    assert "datasets[0].data_files" in gen("--config", _srs_yaml(tmp_path), "--dataset-path", str(tmp_path / "empty"))
    _hf_layout(tmp_path / "other", column="content")
    err = gen("--config", _srs_yaml(tmp_path), "--dataset-path", str(tmp_path / "other"))
    assert "text_column 'text'" in err and "en_part_00000.parquet" in err
    assert "sampler" in gen("--config", _srs_yaml(tmp_path), "--sampler", "finesse-0.17")
