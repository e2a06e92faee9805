"""Retrieval data as Parquet (the `task_dataset` asset's on-disk form) and back."""

import json
from pathlib import Path

import pandas as pd

from sie_evals.lib.atomic import atomic_write, atomic_write_json
from sie_evals.lib.errors import DatasetError
from sie_evals.lib.tasks.retrieval import RetrievalData


def write_snapshot(data: RetrievalData, folder: Path) -> Path:
    folder = Path(folder)
    frames = {
        "corpus": pd.DataFrame({"id": data.corpus_ids, "text": data.corpus_texts}),
        "queries": pd.DataFrame({"id": data.query_ids, "text": data.query_texts}),
        "qrels": pd.DataFrame(
            [(q, d, s) for q, docs in data.qrels.items() for d, s in docs.items()],
            columns=["query_id", "doc_id", "score"],
        ),
    }
    for name, df in frames.items():
        atomic_write(folder / f"{name}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
    # Written last: a folder without it is incomplete and is not read.
    atomic_write_json(folder / "dataset.json", data.describe())
    return folder


def read_snapshot(folder: Path) -> RetrievalData:
    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path}: dataset snapshot missing or incomplete; rematerialize task_dataset")
    meta = json.loads(meta_path.read_text())
    corpus = pd.read_parquet(folder / "corpus.parquet")
    queries = pd.read_parquet(folder / "queries.parquet")
    qrels_df = pd.read_parquet(folder / "qrels.parquet")
    qrels: dict[str, dict[str, int]] = {}
    for q, d, s in qrels_df.itertuples(index=False):
        qrels.setdefault(q, {})[d] = int(s)
    data = RetrievalData(
        task_id=meta["task"],
        split=meta["split"],
        corpus_ids=corpus["id"].tolist(),
        corpus_texts=corpus["text"].tolist(),
        query_ids=queries["id"].tolist(),
        query_texts=queries["text"].tolist(),
        qrels=qrels,
        origin=meta["origin"],
        subset=meta.get("subset"),
    )
    if data.content_hash != meta["content_hash"]:
        raise DatasetError(f"{folder}: snapshot content does not match its recorded hash; rematerialize task_dataset")
    return data
