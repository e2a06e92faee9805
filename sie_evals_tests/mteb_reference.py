"""The reference side of the MTEB-equality tests: `mteb.evaluate` with sentence-transformers, on data read
straight from a folder with `datasets`/csv (not through this project's loaders)."""

import csv
import json
from pathlib import Path
from typing import Any

MTEB_ROUNDED = ("ndcg_at", "map_at", "recall_at", "precision_at", "hit_rate_at")


def sentence_transformer(minilm):
    from sentence_transformers import SentenceTransformer

    from sie_evals.lib.config.weights import resolve_weights

    return SentenceTransformer(resolve_weights(minilm), device="cpu")


def beir_folder_as_mteb_split(folder: Path, split: str = "test") -> dict[str, Any]:
    """A BEIR folder in MTEB 2.x's RetrievalSplitData shape, as its RetrievalDatasetLoader builds it."""
    from datasets import Dataset

    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip()]
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text().splitlines() if line.strip()]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    for qid, did, score in rows[1:]:
        qrels.setdefault(qid, {})[did] = int(score)
    return {
        "corpus": Dataset.from_list(
            [{"id": str(d["_id"]), "title": d.get("title") or "", "text": d.get("text") or ""} for d in corpus]
        ),
        "queries": Dataset.from_list([{"id": str(q["_id"]), "text": q["text"]} for q in queries if q["_id"] in qrels]),
        "relevant_docs": qrels,
        "top_ranked": None,
    }


def mteb_evaluate(task, model, subset: str = "default", split: str = "test") -> dict[str, Any]:
    """mteb.evaluate on a task whose data is already loaded; the scores dict of one split/subset."""
    import mteb

    result = mteb.evaluate(model, task, cache=None, overwrite_strategy="always", show_progress_bar=False)
    task_result = result.task_results[0]
    return next(s for s in task_result.scores[split] if s["hf_subset"] == subset)
