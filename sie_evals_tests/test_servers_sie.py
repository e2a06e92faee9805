"""The real SIE server (sie-server 0.10.1 in its own Python 3.12 venv), started by the harness.

One server is shared by the module (each start costs ~20-40 s here); fault tests that kill or break a
server start their own. Skipped when the venv is not provisioned, unless SIE_EVALS_REQUIRE_SERVERS=1
(set by scripts/test.sh after provisioning), where a missing venv fails instead."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines import EmbedKind, create_engine
from sie_evals.lib.engines.cache import EmbeddingCache, engine_identity
from sie_evals.lib.engines.sie import SieEngine
from sie_evals.lib.quality.parity import per_item_cosine
from sie_evals.lib.servers import install
from sie_evals_tests.conftest import MODEL_ID, REPO_ROOT, skip_unless_required
from sie_evals_tests.test_servers_http import alive, children, group_members, is_loopback, listening_sockets

pytestmark = [pytest.mark.servers, pytest.mark.slow]
SIE_BENCH = str(Path(sys.executable).parent / "sie-bench")


def require_server(name: str) -> None:
    if not install.installed(name):
        why = f"{name} server venv not provisioned in {install.home(name)} (run `sie-bench servers install {name}`)"
        skip_unless_required(why)


@pytest.fixture(scope="module")
def sie_engine(minilm, tmp_path_factory):
    require_server("sie")
    engine = SieEngine(minilm, minilm.resolve_profile("default"), log_dir=tmp_path_factory.mktemp("sie-logs"))
    engine.start()
    pid = engine.server.pid
    yield engine
    engine.stop()
    assert not alive(pid) and group_members(pid) == []


def sample_texts(scifact_test, n_docs=24, n_queries=8):
    return list(scifact_test.corpus_texts[:n_docs]), list(scifact_test.query_texts[:n_queries])


def test_sie_vectors_match_local(sie_engine, local_engine, scifact_test):
    docs, queries = sample_texts(scifact_test)
    for texts, kind in ((docs, EmbedKind.document), (queries, EmbedKind.query)):
        cos = per_item_cosine(sie_engine.embed(texts, kind), local_engine.embed(texts, kind))
        assert cos.min() >= 0.9999, cos.min()
    timing = sie_engine.last_server_timing
    assert timing and timing["inference_ms"] > 0 and timing["total_ms"] >= timing["inference_ms"]
    info = sie_engine.info()
    assert info.version == "sie-server 0.10.1"
    log = Path(info.extra["server"]["log"])
    assert log.is_file() and "--no-hf-fallback" in log.read_text() and "telemetry: disabled" in log.read_text()


def test_sie_listens_only_on_loopback(sie_engine):
    pids = group_members(sie_engine.server.pid)
    found = listening_sockets(pids)
    assert f"127.0.0.1:{sie_engine.server.port}" in found
    assert all(is_loopback(a) for a in found), found


def test_sie_concurrent_threads(sie_engine, scifact_test):
    from concurrent.futures import ThreadPoolExecutor

    docs = list(scifact_test.corpus_texts[:32])
    sequential = sie_engine.embed(docs, EmbedKind.document)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda i: sie_engine.embed(docs[i::4], EmbedKind.document), range(4)))
    for i, part in enumerate(parts):
        assert per_item_cosine(part, sequential[i::4]).min() > 0.99999


def test_sie_url_uses_running_server(sie_engine, minilm, scifact_test):
    docs, _ = sample_texts(scifact_test, 8)
    before = children(os.getpid())
    engine = create_engine("sie", minilm, minilm.resolve_profile("default"), sie_url=sie_engine.server.base_url)
    with engine:
        out = engine.embed(docs, EmbedKind.document)
    assert engine.server is None and children(os.getpid()) == before  # nothing started
    assert engine.info().extra["server"] == {"managed": False, "url": sie_engine.server.base_url}
    assert per_item_cosine(out, sie_engine.embed(docs, EmbedKind.document)).min() > 0.99999


def test_sie_quality_eval_with_parity(minilm, tmp_path):
    """A managed run through run_eval: same scores as local, parity in the report, server gone after."""
    require_server("sie")
    from sie_evals.lib.harness.eval_run import EvalRequest, run_eval
    from sie_evals.lib.harness.evaluation import DataOptions

    req = EvalRequest(
        model=MODEL_ID,
        task="beir/SciFact",
        sources=("local", "sie", "benchmark"),
        data=DataOptions(limit_queries=20, corpus_size=150),
        cache_dir=tmp_path / "cache",
    )
    outcome = run_eval(req)
    local, sie = (outcome.report["sources"][s] for s in ("local", "sie"))
    assert abs(local["metrics"]["ndcg_at_10"] - sie["metrics"]["ndcg_at_10"]) <= 0.001
    par = sie["parity_vs_local"]
    assert par["n"] == 150 + 20 and par["min_cosine"] >= 0.9999
    assert "parity_vs_local" not in local
    server = sie["server"]
    assert server["managed"] and Path(server["log"]).is_file()
    assert not alive(server["pid"]) and group_members(server["pid"]) == []


def test_sie_killed_mid_run_keeps_cached_chunks(minilm, scifact_test, tmp_path):
    require_server("sie")
    engine = SieEngine(minilm, minilm.resolve_profile("default"), log_dir=tmp_path)
    cache = EmbeddingCache(tmp_path / "cache", chunk_size=8)
    docs = list(scifact_test.corpus_texts[:40])
    done: list[np.ndarray] = []
    real_embed = engine.embed

    def embed_then_kill(texts, kind):
        if len(done) == 2:
            os.killpg(engine.server.pid, signal.SIGKILL)  # the server dies between two chunks
            engine.server.proc.wait(10)
        out = real_embed(texts, kind)
        done.append(out)
        return out

    engine.embed = embed_then_kill
    pid = None
    with engine, pytest.raises(EngineError) as err:
        engine.start()
        pid = engine.server.pid
        start = time.monotonic()
        cache.embed(engine, docs, EmbedKind.document)
    assert time.monotonic() - start < 30
    msg = str(err.value)
    assert "killed by signal SIGKILL during the run" in msg and "last lines of the server log" in msg
    assert not alive(pid) and group_members(pid) == []
    # The two chunks finished before the crash are in the cache, intact; the rest is not.
    identity = engine_identity(engine)
    for i, arr in enumerate(done):
        key = cache.key(identity, EmbedKind.document, docs[i * 8 : (i + 1) * 8])
        np.testing.assert_array_equal(cache.get(key, 8), arr)
    assert cache.get(cache.key(identity, EmbedKind.document, docs[16:24]), 8) is None


def test_sie_broken_weights_fail_fast_with_log(minilm, tmp_path):
    require_server("sie")
    import shutil

    from sie_evals.lib.config.weights import resolve_weights

    weights = tmp_path / "weights"
    shutil.copytree(resolve_weights(minilm), weights)
    (weights / "model.safetensors").write_bytes(b"not a safetensors file")
    broken = minilm.model_copy(
        update={"weights": minilm.weights.model_copy(update={"package": None, "path": str(weights)})}
    )
    engine = SieEngine(broken, broken.resolve_profile("default"), log_dir=tmp_path, startup_timeout_s=180)
    start = time.monotonic()
    with engine, pytest.raises(EngineError) as err:
        engine.embed(["x"], EmbedKind.query)
    assert time.monotonic() - start < 180
    msg = str(err.value)
    assert "start-up failed" in msg and "SafetensorError" in msg
    assert not alive(engine.server.pid) and group_members(engine.server.pid) == []


def test_sie_fixed_port_taken(minilm, tmp_path):
    require_server("sie")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        engine = SieEngine(minilm, minilm.resolve_profile("default"), log_dir=tmp_path, port=port)
        with engine, pytest.raises(EngineError, match=f"port {port} on 127.0.0.1 is already in use"):
            engine.embed(["x"], EmbedKind.query)
        assert engine.server.proc is None  # nothing was started


# ----- the CLI in a subprocess: Ctrl-C and a server killed mid-run


def _start_cli(tmp_path, *extra):
    env = {
        **os.environ,
        "SIE_EVALS_CACHE_DIR": str(tmp_path / "cache"),
        "SIE_EVALS_RESULTS_DIR": str(tmp_path / "results"),
        "SIE_EVALS_MODEL_CONFIGS_DIR": str(tmp_path / "model_configs"),
    }
    if not (tmp_path / "model_configs").exists():
        import shutil

        shutil.copytree(REPO_ROOT / "model_configs", tmp_path / "model_configs")
    argv = [SIE_BENCH, "eval", MODEL_ID, "-t", "beir/SciFact", "-s", "sie", "--limit-queries", "20"]
    argv += ["--corpus-size", "1000", "--no-progress", "--no-record", "-o", str(tmp_path / "out.json"), *extra]
    # Its own session, like a shell job: Ctrl-C goes to this process group only.
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _wait_for_server(proc, listening: bool, timeout: float = 180) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for pid in children(proc.pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"sie-server" in cmdline and (not listening or listening_sockets(group_members(pid))):
                return pid
        time.sleep(0.2)
    raise AssertionError("the sie server did not come up")


def test_cli_ctrl_c_stops_server(tmp_path):
    require_server("sie")
    proc = _start_cli(tmp_path)
    try:
        server_pid = _wait_for_server(proc, listening=False)
        time.sleep(3)  # mid start-up (model loading)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert not alive(server_pid) and group_members(server_pid) == []
    assert not (tmp_path / "out.json").exists()


def test_cli_server_killed_mid_run_writes_nothing(tmp_path):
    require_server("sie")
    config = tmp_path / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    proc = _start_cli(tmp_path, "--save-measurements", "sie")
    before = config.read_text()
    try:
        server_pid = _wait_for_server(proc, listening=True)
        time.sleep(2)  # embedding 1,000 documents takes ~40 s: this is mid-run
        os.kill(server_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert "killed by signal SIGKILL during the run" in err and "server log" in err
    assert not (tmp_path / "out.json").exists()
    assert config.read_text() == before  # no measurement appended
    assert not (tmp_path / "model_configs" / "per_query" / "all-MiniLM-L6-v2").exists()  # no per-query file saved
    assert not alive(server_pid) and group_members(server_pid) == []
    logs = list((tmp_path / "results" / "server_logs").glob("sie-*.log"))
    assert len(logs) == 1 and "Uvicorn running on http://127.0.0.1" in logs[0].read_text()
    json.dumps(err)  # the message is plain text (no binary from the log)
