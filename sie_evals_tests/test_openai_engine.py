"""The openai source against a real OpenAI-compatible server on 127.0.0.1 that runs
sentence-transformers (sie_evals_tests/openai_server.py), through the CLI and the engine."""

import json
import os
import secrets
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.core.errors import ConfigError, EngineError, InputError
from sie_evals_tests import openai_server
from sie_evals_tests.conftest import REPO_ROOT

KEY = "sk-test-" + secrets.token_hex(16)
KEY_ENV = "SIE_EVALS_TEST_OPENAI_KEY"
SLICE = ["--limit-queries", "20", "--corpus-size", "200", "--no-progress", "--no-record"]


@pytest.fixture(scope="module")
def openai_url(tmp_path_factory):
    with openai_server.running(tmp_path_factory.mktemp("openai-server") / "server.log", key=KEY) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def keyed_configs(tmp_path, monkeypatch):
    """The default model's config plus a profile whose API key comes from KEY_ENV."""
    folder = tmp_path / "configs"
    folder.mkdir()
    text = (REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml").read_text()
    text = text.replace(
        "\nprofiles:\n  default:\n",
        f"\nprofiles:\n  keyed:\n    api_key_env: {KEY_ENV}\n    openai_model: all-MiniLM-L6-v2\n  default:\n",
    )
    (folder / "sentence-transformers__all-MiniLM-L6-v2.yaml").write_text(text)
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(folder))
    monkeypatch.setenv(KEY_ENV, KEY)
    return folder


def test_local_vs_openai_parity_and_the_key_is_never_written(openai_url, keyed_configs, tmp_path, caplog):
    out = tmp_path / "report.json"
    args = ["-s", "local,openai", "-p", "keyed", "--openai-url", openai_url, "-o", str(out), *SLICE]
    result = CliRunner().invoke(app, ["eval", "all-MiniLM-L6-v2", "-t", "beir/SciFact", *args])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    local, remote = report["sources"]["local"], report["sources"]["openai"]
    assert remote["parity_vs_local"]["min_cosine"] >= 0.9999
    assert remote["metrics"]["ndcg_at_10"] == pytest.approx(local["metrics"]["ndcg_at_10"], abs=1e-4)
    assert remote["run_conditions"]["engine"] == "openai" and remote["forward_calls"] > 0
    # The key appears nowhere: console output, report, per-query files, logs, cached entries.
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    written += [p for p in Path(os.environ["SIE_EVALS_CACHE_DIR"]).rglob("*.json")]
    assert KEY not in result.output and KEY not in caplog.text
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path


def _engine(keyed_configs, url, request_model):
    from sie_evals.lib.config.model_config import find_model_config
    from sie_evals.lib.engines import create_engine

    config = find_model_config("all-MiniLM-L6-v2", keyed_configs)
    return create_engine("openai", config, config.resolve_profile("keyed"), openai_url=url, openai_model=request_model)


@pytest.mark.parametrize(("suffix", "needle"), [("-wrong-dim", "383 dimensions, expected 384"), ("-nan", "NaN")])
def test_bad_replies_are_rejected_and_nothing_is_cached(openai_url, keyed_configs, tmp_path, suffix, needle):
    from sie_evals.lib.engines import EmbedKind
    from sie_evals.lib.engines.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path / "cache")
    engine = _engine(keyed_configs, openai_url, "all-MiniLM-L6-v2" + suffix)
    with engine, pytest.raises(EngineError, match=needle) as err:
        cache.embed(engine, ["a protein", "a gene"], EmbedKind.document)
    assert KEY not in str(err.value)
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_a_server_echoing_the_key_is_redacted(openai_url, keyed_configs):
    from sie_evals.lib.engines import EmbedKind

    engine = _engine(keyed_configs, openai_url, "all-MiniLM-L6-v2-echo")
    with engine, pytest.raises(EngineError, match="HTTP 400") as err:
        engine.embed(["a protein"], EmbedKind.query)
    assert KEY not in str(err.value) and "Bearer ***" in str(err.value)


def test_missing_url_or_key_is_a_clear_input_error(keyed_configs, monkeypatch):
    monkeypatch.delenv("SIE_EVALS_OPENAI_URL", raising=False)
    with pytest.raises(InputError, match="--openai-url"):
        _engine(keyed_configs, None, None)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(ConfigError, match=f"api_key_env.*{KEY_ENV}"):
        _engine(keyed_configs, "http://127.0.0.1:9", None)
    result = CliRunner().invoke(app, ["eval", "all-MiniLM-L6-v2", "-t", "beir/SciFact", "-s", "openai", *SLICE])
    assert result.exit_code == 2 and "--openai-url" in result.output
