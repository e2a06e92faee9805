"""Parity between sources: per-item cosine (pure function) and its place in the eval report."""

import numpy as np
import pytest

from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.quality.parity import parity, parity_against, per_item_cosine


def test_per_item_cosine_known_values():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(per_item_cosine(a, b), [1.0, -1.0, 1 / np.sqrt(2), 0.0])


def test_per_item_cosine_shape_mismatch():
    with pytest.raises(ValueError, match="same 2-D shape"):
        per_item_cosine(np.zeros((2, 3)), np.zeros((3, 3)))


def test_parity_by_kind_and_overall():
    rng = np.random.default_rng(0)
    q, d = rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
    d2 = d.copy()
    d2[3] = -d2[3]  # one document flipped
    out = parity({EmbedKind.query: q, EmbedKind.document: d}, {EmbedKind.query: q * 3, EmbedKind.document: d2})
    assert out["n"] == 12
    assert out["by_kind"]["query"]["min_cosine"] == pytest.approx(1.0)
    assert out["by_kind"]["document"]["argmin"] == 3
    assert out["min_cosine"] == pytest.approx(-1.0)
    assert out["mean_cosine"] == pytest.approx((11 - 1) / 12)


def test_local_vs_local_real_vectors(minilm, local_engine, scifact_test):
    """Two engines with the same weights agree per item; a different profile (bf16) does not exactly."""
    from sie_evals.lib.engines.local import LocalEngine

    texts = list(scifact_test.corpus_texts[:16])
    a = local_engine.embed(texts, EmbedKind.document)
    with LocalEngine(minilm, minilm.resolve_profile("default"), threads=2, batch_size=5) as other:
        b = other.embed(texts, EmbedKind.document)
    assert per_item_cosine(a, b).min() > 0.99999
    with LocalEngine(minilm, minilm.resolve_profile("bf16"), threads=2) as bf16:
        c = bf16.embed(texts, EmbedKind.document)
    cos = per_item_cosine(a, c)
    assert 0.98 < cos.min() < 0.99999


class _R:
    def __init__(self, source, vectors):
        self.source, self.vectors = source, vectors


def test_parity_against_local_only():
    v = {EmbedKind.query: np.eye(3)}
    assert parity_against([_R("sie", v)]) == {}
    out = parity_against([_R("local", v), _R("sie", v), _R("infinity", {EmbedKind.query: np.eye(3)[::-1]})])
    assert set(out) == {"sie", "infinity"}
    assert out["sie"]["min_cosine"] == pytest.approx(1.0)
    assert out["infinity"]["min_cosine"] == pytest.approx(0.0)
