"""infinity-emb 0.0.78 (own Python 3.11 venv, CPU torch), started by the harness. One server per module;
the port test starts its own. Skipped when not provisioned unless SIE_EVALS_REQUIRE_SERVERS=1."""

import socket

import pytest

from sie_evals.lib.engines import EmbedKind, create_engine
from sie_evals.lib.engines.infinity import InfinityEngine
from sie_evals.lib.quality.parity import per_item_cosine
from sie_evals.lib.servers import managed
from sie_evals_tests.conftest import MODEL_ID
from sie_evals_tests.test_servers_http import alive, group_members, is_loopback, listening_sockets
from sie_evals_tests.test_servers_sie import require_server

pytestmark = [pytest.mark.servers, pytest.mark.slow]


@pytest.fixture(scope="module")
def infinity_engine(minilm, tmp_path_factory):
    require_server("infinity")
    engine = InfinityEngine(minilm, minilm.resolve_profile("default"), log_dir=tmp_path_factory.mktemp("inf-logs"))
    engine.start()
    pid = engine.server.pid
    yield engine
    engine.stop()
    assert not alive(pid) and group_members(pid) == []


def test_infinity_vectors_match_local(infinity_engine, local_engine, scifact_test):
    for texts, kind in (
        (list(scifact_test.corpus_texts[:24]), EmbedKind.document),
        (list(scifact_test.query_texts[:8]), EmbedKind.query),
    ):
        cos = per_item_cosine(infinity_engine.embed(texts, kind), local_engine.embed(texts, kind))
        assert cos.min() >= 0.9999, cos.min()
    assert infinity_engine.info().version == "infinity-emb 0.0.78"


def test_infinity_listens_only_on_loopback(infinity_engine):
    found = listening_sockets(group_members(infinity_engine.server.pid))
    assert f"127.0.0.1:{infinity_engine.server.port}" in found
    assert all(is_loopback(a) for a in found), found


def test_infinity_quality_eval_with_parity_via_url(infinity_engine, tmp_path):
    """--infinity-url: the eval uses the running server; scores and parity as with local."""
    from sie_evals.lib.harness.eval_run import EvalRequest, run_eval
    from sie_evals.lib.harness.evaluation import DataOptions, EngineOptions

    req = EvalRequest(
        model=MODEL_ID,
        task="beir/SciFact",
        sources=("local", "infinity"),
        data=DataOptions(limit_queries=20, corpus_size=150),
        engine=EngineOptions(server_urls={"infinity": infinity_engine.server.base_url}),
        cache_dir=tmp_path / "cache",
    )
    report = run_eval(req).report
    local, inf = report["sources"]["local"], report["sources"]["infinity"]
    assert abs(local["metrics"]["ndcg_at_10"] - inf["metrics"]["ndcg_at_10"]) <= 0.001
    assert inf["parity_vs_local"]["min_cosine"] >= 0.9999
    assert inf["server"] == {"managed": False, "url": infinity_engine.server.base_url}


def test_infinity_port_grabbed_before_bind_is_retried(minilm, tmp_path, monkeypatch):
    """The free port is taken by someone else before the server binds it: the server fails with
    'address already in use'; the harness starts it again on another port."""
    require_server("infinity")
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = iter([taken])
        real = managed.free_port
        monkeypatch.setattr(managed, "free_port", lambda host="127.0.0.1": next(ports, None) or real(host))
        engine = create_engine("infinity", minilm, minilm.resolve_profile("default"))
        engine.log_dir = tmp_path
        with engine:
            assert engine.embed(["a sentence"], EmbedKind.query).shape == (1, 384)
            assert engine.server.port != taken
            pid = engine.server.pid
        log = engine.server.log_path.read_text()
    assert "address already in use" in log.lower() and log.count("=== ") >= 3  # 2 starts, 1+ stops
    assert not alive(pid) and group_members(pid) == []
