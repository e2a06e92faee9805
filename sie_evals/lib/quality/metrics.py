"""Retrieval metrics exactly as MTEB computes them.

ndcg, map, recall, precision and hit rate come from pytrec_eval (`ndcg_cut`, `map_cut`, `recall`,
`P`, `success`), the engine MTEB uses: linear-gain nDCG, map@k over *all* relevant documents
(trec_eval's map_cut). MRR@k is MTEB's own code: rank by score, ties broken by doc id descending,
first document with relevance > 0. Aggregates are means over evaluated queries; like MTEB, the
pytrec_eval-based means are rounded to 5 decimals and MRR is not.
"""

from collections.abc import Mapping, Sequence

import pandas as pd
import pytrec_eval

# pytrec_eval measure -> our metric prefix (MTEB's score names: ndcg_at_10, map_at_10, ...)
PYTREC_MEASURES: dict[str, str] = {
    "ndcg_cut": "ndcg_at",
    "map_cut": "map_at",
    "recall": "recall_at",
    "P": "precision_at",
    "success": "hit_rate_at",
}
MTEB_ROUND_DIGITS = 5

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def apply_mteb_run_rules(run: Run, ignore_identical_ids: bool, skip_first_result: bool) -> dict[str, dict[str, float]]:
    """MTEB's RetrievalEvaluator.evaluate pre-processing of the run (the run itself when neither applies:
    a copy of a million pairs is not free)."""
    if not ignore_identical_ids and not skip_first_result:
        return {q: docs if isinstance(docs, dict) else dict(docs) for q, docs in run.items()}
    out = {q: dict(docs) for q, docs in run.items()}
    if ignore_identical_ids:
        for q, docs in out.items():
            docs.pop(q, None)
    if skip_first_result:
        out = {q: dict(sorted(docs.items(), key=lambda x: x[1], reverse=True)[1:]) for q, docs in out.items()}
    return out


def mrr_at_k(qrels: Qrels, run: Run, k_values: Sequence[int]) -> dict[str, dict[int, float]]:
    """Per query: {query_id: {k: reciprocal rank of the first relevant doc within the top k}}.

    MTEB sorts each query's run by (score, doc id) descending and takes the first relevant document;
    the same rank without the sort: the best relevant document by (score, doc id), ranked by how many
    documents beat it."""
    out: dict[str, dict[int, float]] = {}
    for qid, doc_scores in run.items():
        relevant = [d for d, rel in qrels[qid].items() if rel > 0 and d in doc_scores]
        first = None
        if relevant:
            best = max(relevant, key=lambda d: (doc_scores[d], d))
            s = doc_scores[best]
            first = 1 + sum(1 for d, v in doc_scores.items() if v > s or (v == s and d > best))
        out[qid] = {k: (1.0 / first if first is not None and first <= k else 0.0) for k in k_values}
    return out


def per_query_scores(qrels: Qrels, run: Run, k_values: Sequence[int]) -> pd.DataFrame:
    """One row per evaluated query, one column per metric (e.g. ndcg_at_10)."""
    missing = [q for q in run if q not in qrels]
    if missing:
        raise ValueError(f"{len(missing)} run queries have no qrels (first: {missing[0]!r})")
    ks = ",".join(str(k) for k in k_values)
    evaluator = pytrec_eval.RelevanceEvaluator(
        {q: dict(d) for q, d in qrels.items()}, {f"{m}.{ks}" for m in PYTREC_MEASURES}
    )
    scores = evaluator.evaluate({q: d if isinstance(d, dict) else dict(d) for q, d in run.items()})
    mrr = mrr_at_k(qrels, {q: run[q] for q in scores}, k_values)
    rows = []
    for qid in (q for q in run if q in scores):  # run order, as MTEB iterates
        row: dict[str, object] = {"query_id": qid}
        for measure, prefix in PYTREC_MEASURES.items():
            for k in k_values:
                row[f"{prefix}_{k}"] = scores[qid][f"{measure}_{k}"]
        for k in k_values:
            row[f"mrr_at_{k}"] = mrr[qid][k]
        rows.append(row)
    columns = ["query_id"] + [f"{p}_{k}" for p in [*PYTREC_MEASURES.values(), "mrr_at"] for k in k_values]
    return pd.DataFrame(rows, columns=columns)


def aggregate(per_query: pd.DataFrame) -> dict[str, float]:
    """Means over queries, rounded where MTEB rounds."""
    if per_query.empty:
        raise ValueError("no queries were evaluated")
    out: dict[str, float] = {}
    for col in per_query.columns:
        if col == "query_id":
            continue
        # Plain left-to-right sum in query order, as MTEB does, so unrounded MRR matches to the last digit.
        mean = float(sum(per_query[col].tolist()) / len(per_query))
        out[col] = mean if col.startswith("mrr_at") else round(mean, MTEB_ROUND_DIGITS)
    return out


def retrieval_scores(
    qrels: Qrels, run: Run, k_values: Sequence[int], ignore_identical_ids: bool = False, skip_first_result: bool = False
) -> tuple[dict[str, float], pd.DataFrame]:
    run = apply_mteb_run_rules(run, ignore_identical_ids, skip_first_result)
    per_query = per_query_scores(qrels, run, k_values)
    return aggregate(per_query), per_query
