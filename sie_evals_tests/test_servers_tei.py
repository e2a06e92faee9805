"""Hugging Face text-embeddings-inference, started by the harness when `text-embeddings-router` is on
PATH. It cannot be obtained on the machines this project is built on (not on PyPI/npm/apt; cargo and
container registries are unreachable), so these tests skip there, saying how to get it."""

import pytest

from sie_evals.lib.engines import EmbedKind, create_engine
from sie_evals.lib.quality.parity import per_item_cosine
from sie_evals.lib.servers import tei
from sie_evals_tests.test_servers_http import alive, group_members, is_loopback, listening_sockets

pytestmark = [
    pytest.mark.servers,
    pytest.mark.slow,
    pytest.mark.skipif(not tei.available(), reason=tei.HOW_TO_GET),
]


def test_tei_vectors_match_local(minilm, local_engine, scifact_test, tmp_path):
    engine = create_engine("tei", minilm, minilm.resolve_profile("default"))
    engine.log_dir = tmp_path
    texts = list(scifact_test.corpus_texts[:16])
    with engine:
        out = engine.embed(texts, EmbedKind.document)
        pid = engine.server.pid
        found = listening_sockets(group_members(pid))
        assert found and all(is_loopback(a) for a in found), found
        assert engine.info().extra.get("server_version")
    assert per_item_cosine(out, local_engine.embed(texts, EmbedKind.document)).min() >= 0.9999
    assert not alive(pid) and group_members(pid) == []
