"""The local engine against sentence-transformers' own encode of the same weights."""

import numpy as np
import pytest

from sie_evals.lib.config.weights import resolve_weights
from sie_evals.lib.core.errors import EngineError
from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.engines.base import validate_embeddings
from sie_evals.lib.engines.local import LocalEngine


@pytest.fixture(scope="module")
def st_model(minilm):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(resolve_weights(minilm), device="cpu")


def _sample_texts(scifact_test, n=40):
    # the longest documents (truncated at 256 tokens), some short ones, and queries: mixed lengths
    by_len = sorted(scifact_test.corpus_texts, key=len)
    return by_len[-n // 2 :] + by_len[: n // 4] + scifact_test.query_texts[: n // 4]


def test_vectors_equal_sentence_transformers_encode(local_engine, st_model, scifact_test):
    texts = _sample_texts(scifact_test)
    ours = local_engine.embed(texts, EmbedKind.document)
    ref = st_model.encode(texts, batch_size=16, convert_to_numpy=True, normalize_embeddings=False)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (len(texts), 384)
    cos = (ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.9999, cos.min()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_known_answer_and_batch_independence(local_engine):
    # all-MiniLM-L6-v2 known answer (shared/reference/offline-assets.md)
    v = local_engine.embed(["This is an example sentence", "Each sentence is converted"], EmbedKind.query)
    np.testing.assert_allclose(v[0, :5], [0.06765689, 0.06349589, 0.04871306, 0.07930497, 0.03744798], atol=1e-6)
    assert float(v[0] @ v[1]) == pytest.approx(0.4045592, abs=1e-6)
    alone = local_engine.embed(["Each sentence is converted"], EmbedKind.query)
    np.testing.assert_allclose(alone[0], v[1], atol=1e-6)


def test_prefixes_and_pooling_follow_the_profile(minilm, local_engine):
    profile = minilm.resolve_profile("default").model_copy(update={"query_prefix": "query: "})
    prefixed = LocalEngine(minilm, profile)
    q = prefixed.embed(["protein intake"], EmbedKind.query)
    d = prefixed.embed(["protein intake"], EmbedKind.document)
    ref = local_engine.embed(["query: protein intake"], EmbedKind.document)
    np.testing.assert_allclose(q, ref, atol=1e-6)
    assert not np.allclose(q, d)
    cls = LocalEngine(minilm, profile.model_copy(update={"pooling": "cls", "normalize": False}))
    c = cls.embed(["protein intake"], EmbedKind.document)
    assert abs(np.linalg.norm(c) - 1.0) > 1e-3  # unnormalised CLS vector differs from the mean-pooled unit one


def test_engine_info_does_not_load_the_model(minilm):
    engine = LocalEngine(minilm, minilm.resolve_profile("default"))
    info = engine.info()
    assert not engine.started and not engine._workers
    assert info.engine == "local" and "transformers" in info.version and info.weights.startswith("package:")


@pytest.mark.parametrize(
    ("value", "rows", "needle"),
    [
        (np.ones((2, 3)), 3, "asked for 3"),
        (np.array([[1.0, np.nan]]), 1, "NaN"),
        (np.ones(3), 3, "2-D"),
        (np.ones((2, 0)), 2, "zero dimensions"),
    ],
)
def test_bad_engine_output_is_rejected(value, rows, needle):
    with pytest.raises(EngineError, match=needle):
        validate_embeddings(value, rows, "test")
