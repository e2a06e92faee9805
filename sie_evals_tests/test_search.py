import numpy as np
import pytest

from sie_evals.lib.quality.search import exact_top_k, to_run


@pytest.mark.parametrize("doc_chunk", [7, 64, 50_000])
def test_top_k_equals_brute_force_cosine(doc_chunk):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(13, 24)).astype(np.float32)
    d = rng.normal(size=(200, 24)).astype(np.float32) * rng.uniform(0.5, 3, size=(200, 1)).astype(np.float32)
    scores, idx = exact_top_k(q, d, k=25, doc_chunk=doc_chunk)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dn = d / np.linalg.norm(d, axis=1, keepdims=True)
    full = qn @ dn.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :25]
    assert scores.shape == idx.shape == (13, 25)
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first


def test_k_larger_than_corpus_and_run_shape():
    q = np.eye(2, 3, dtype=np.float32)
    d = np.eye(3, dtype=np.float32)
    scores, idx = exact_top_k(q, d, k=1000)
    assert idx.shape == (2, 3)
    run = to_run(["qa", "qb"], ["x", "y", "z"], scores, idx)
    assert run["qa"]["x"] == pytest.approx(1.0) and set(run["qb"]) == {"x", "y", "z"}


def test_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="dims"):
        exact_top_k(np.ones((1, 3), np.float32), np.ones((2, 4), np.float32), 1)
