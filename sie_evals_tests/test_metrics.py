"""Our metric code against its references: pytrec_eval directly, and MTEB's own functions."""

import random

import pytest
import pytrec_eval

from sie_evals.lib.quality.metrics import PYTREC_MEASURES, aggregate, mrr_at_k, retrieval_scores
from sie_evals.lib.tasks.registry import MTEB_K_VALUES
from sie_evals_tests.conftest import SCIFACT


def _read_qrels():
    qrels = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    return qrels


def _read_run():
    run = {}
    for line in (SCIFACT / "runs" / "all-MiniLM-L6-v2.test.top100.trec").read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, {})[d] = float(s)
    return run


def _pytrec_means(qrels, run, k_values):
    ks = ",".join(map(str, k_values))
    ev = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{ks}" for m in PYTREC_MEASURES})
    scores = ev.evaluate(run)
    return {
        f"{prefix}_{k}": sum(s[f"{m}_{k}"] for s in scores.values()) / len(scores)
        for m, prefix in PYTREC_MEASURES.items()
        for k in k_values
    }


def test_reference_run_reproduces_published_scifact_values():
    metrics, per_query = retrieval_scores(_read_qrels(), _read_run(), MTEB_K_VALUES)
    assert len(per_query) == 300
    # pytrec_eval values documented with the reference run (shared/data/scifact/README.md)
    assert metrics["ndcg_at_10"] == 0.64508
    assert metrics["map_at_10"] == 0.59593
    assert metrics["recall_at_10"] == 0.78333
    assert metrics["recall_at_100"] == 0.925
    assert metrics["precision_at_10"] == 0.08833
    # MTEB's published mrr@10 for this model, to every digit
    assert metrics["mrr_at_10"] == pytest.approx(0.6047248677248677, abs=1e-15)


def test_equals_pytrec_eval_on_reference_run():
    qrels, run = _read_qrels(), _read_run()
    metrics, _ = retrieval_scores(qrels, run, MTEB_K_VALUES)
    for name, value in _pytrec_means(qrels, run, MTEB_K_VALUES).items():
        assert metrics[name] == round(value, 5), name


def _random_tied_run(rng, qrels, docs, n_per_query=60):
    run = {}
    for q in qrels:
        chosen = rng.sample(docs, n_per_query)
        # few distinct score values: many exact ties, which trec_eval breaks by doc id
        run[q] = {d: rng.choice([0.1, 0.2, 0.5, 0.5, 0.9]) for d in chosen}
        for d in list(qrels[q])[:1]:
            if rng.random() < 0.7:
                run[q][d] = rng.choice([0.5, 0.9])
    return run


@pytest.mark.parametrize("seed", range(5))
def test_equals_pytrec_eval_and_mteb_on_random_tied_runs(seed):
    # mteb is a test dependency: if this private module moves, the parity claim must fail, not skip
    from mteb._evaluators import retrieval_metrics as mteb_metrics

    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(400)]
    qrels = {f"q{i}": {d: rng.choice([1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 6))} for i in range(40)}
    qrels["q0"][docs[0]] = 0  # a judged-irrelevant document
    run = _random_tied_run(rng, qrels, docs)
    k_values = [1, 3, 5, 10, 20, 100]
    metrics, per_query = retrieval_scores(qrels, run, k_values)
    # per query, unrounded, against pytrec_eval itself
    ev = pytrec_eval.RelevanceEvaluator(qrels, {f"{m}.{','.join(map(str, k_values))}" for m in PYTREC_MEASURES})
    ref = ev.evaluate(run)
    for row in per_query.itertuples(index=False):
        for m, prefix in PYTREC_MEASURES.items():
            for k in k_values:
                assert getattr(row, f"{prefix}_{k}") == ref[row.query_id][f"{m}_{k}"]
    # aggregates against MTEB's own calculate_retrieval_scores (rounding and MRR tie-breaking included)
    res = mteb_metrics.calculate_retrieval_scores(run, qrels, k_values)
    for k in k_values:
        assert metrics[f"ndcg_at_{k}"] == res.ndcg[f"NDCG@{k}"]
        assert metrics[f"map_at_{k}"] == res.map[f"MAP@{k}"]
        assert metrics[f"recall_at_{k}"] == res.recall[f"Recall@{k}"]
        assert metrics[f"precision_at_{k}"] == res.precision[f"P@{k}"]
        assert metrics[f"hit_rate_at_{k}"] == res.hit_rate[f"HitRate@{k}"]
        assert metrics[f"mrr_at_{k}"] == res.mrr[f"MRR@{k}"]


def test_mrr_ties_break_by_doc_id_descending():
    qrels = {"q": {"a": 1}}
    run = {"q": {"a": 0.5, "b": 0.5}}  # tie: 'b' > 'a', so 'b' ranks first and 'a' is at rank 2
    assert mrr_at_k(qrels, run, [1, 10])["q"] == {1: 0.0, 10: 0.5}


def test_ignore_identical_ids_drops_self_matches():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 0.99, "d1": 0.5}}
    with_self, _ = retrieval_scores(qrels, run, [1])
    without_self, _ = retrieval_scores(qrels, run, [1], ignore_identical_ids=True)
    assert with_self["ndcg_at_1"] == 0.0 and without_self["ndcg_at_1"] == 1.0


def test_aggregate_rejects_empty():
    import pandas as pd

    with pytest.raises(ValueError):
        aggregate(pd.DataFrame(columns=["query_id", "ndcg_at_10"]))
