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


def _torch_chunked_cosine(q: np.ndarray, d: np.ndarray, chunk: int) -> np.ndarray:
    """Today's scores: torch-normalised float32 vectors, the product taken in the same chunks."""
    import torch

    qn = torch.nn.functional.normalize(torch.from_numpy(q), dim=1)
    parts = [
        qn @ torch.nn.functional.normalize(torch.from_numpy(d[s : s + chunk]), dim=1).T for s in range(0, len(d), chunk)
    ]
    return torch.cat(parts, dim=1).numpy()


@pytest.mark.parametrize("doc_chunk", [50, 333, 50_000])
def test_scores_are_bit_identical_to_the_chunked_torch_product(doc_chunk):
    rng = np.random.default_rng(3)
    q = rng.normal(size=(40, 32)).astype(np.float32)
    d = rng.normal(size=(2000, 32)).astype(np.float32)
    scores, idx = exact_top_k(q, d, k=100, doc_chunk=doc_chunk)
    full = _torch_chunked_cosine(q, d, doc_chunk)
    np.testing.assert_array_equal(scores, np.take_along_axis(full, idx, axis=1))  # bits, not a tolerance
    expected = np.lexsort((np.broadcast_to(np.arange(2000), full.shape), -full), axis=1)[:, :100]
    np.testing.assert_array_equal(idx, expected)


def test_ties_are_ordered_by_document_index():
    """Documented tie order: score descending, then document index ascending, across chunks."""
    q = np.ones((3, 4), np.float32)
    d = np.ones((500, 4), np.float32)  # every document ties
    d[[7, 250, 499]] *= -1  # three lose
    scores, idx = exact_top_k(q, d, k=300, doc_chunk=64)
    expected = [i for i in range(500) if i not in (7, 250, 499)][:300]
    assert (idx == np.array(expected)).all()
    assert (scores == scores[0, 0]).all()


def test_adversarial_order_takes_the_chunk_top_k_and_stays_exact():
    """Scores rising with the document index: every chunk beats the running top k entirely (the
    fallback to a full top k per chunk), and a shuffle of it (the threshold-filter path)."""
    rng = np.random.default_rng(5)
    q = np.zeros((2, 8), np.float32)
    q[:, 0] = 1
    angle = np.linspace(1.5, 0.0, 3000)
    d = np.zeros((3000, 8), np.float32)
    d[:, 0], d[:, 1] = np.cos(angle), np.sin(angle)
    for docs in (d, d[rng.permutation(3000)]):
        _, idx = exact_top_k(q, docs, k=200, doc_chunk=100)
        full = _torch_chunked_cosine(q, docs, 100)
        expected = np.lexsort((np.broadcast_to(np.arange(3000), full.shape), -full), axis=1)[:, :200]
        np.testing.assert_array_equal(idx, expected)


def test_to_run_matches_the_pair_by_pair_build():
    rng = np.random.default_rng(1)
    scores = rng.random((3, 5)).astype(np.float32)
    idx = rng.integers(0, 9, (3, 5))
    doc_ids = [f"d{i}" for i in range(9)]
    run = to_run(["a", "b", "c"], doc_ids, scores, idx)
    for row, qid in enumerate("abc"):
        assert run[qid] == {doc_ids[j]: float(s) for s, j in zip(scores[row], idx[row], strict=True)}
        assert all(type(v) is float for v in run[qid].values())


def test_mrr_without_sorting_equals_mtebs_sorted_rule():
    """MTEB's MRR: sort by (score, doc id) descending, first relevant within k; ties are frequent here."""
    from sie_evals.lib.quality.metrics import mrr_at_k

    rng = np.random.default_rng(2)
    run, qrels = {}, {}
    for qi in range(200):
        docs = [f"d{j}" for j in rng.choice(60, 40, replace=False)]
        run[f"q{qi}"] = {doc: float(rng.integers(0, 5)) for doc in docs}  # many ties
        qrels[f"q{qi}"] = {f"d{j}": int(rng.integers(0, 2)) for j in rng.choice(60, 3, replace=False)}
    k_values = [1, 3, 10, 30]
    expected = {}
    for qid, doc_scores in run.items():
        ranked = sorted(doc_scores.items(), key=lambda item: (item[1], item[0]), reverse=True)[:30]
        relevant = {d for d, rel in qrels[qid].items() if rel > 0}
        first = next((r for r, (d, _) in enumerate(ranked, start=1) if d in relevant), None)
        expected[qid] = {k: (1.0 / first if first is not None and first <= k else 0.0) for k in k_values}
    assert mrr_at_k(qrels, run, k_values) == expected
