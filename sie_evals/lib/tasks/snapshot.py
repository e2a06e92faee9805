"""Task data as Parquet (the `task_dataset` asset's on-disk form) and back, for every task type."""

import json
from pathlib import Path

import pandas as pd

from sie_evals.lib.core.atomic import atomic_write, atomic_write_json
from sie_evals.lib.core.errors import DatasetError
from sie_evals.lib.tasks.labeled import ClassificationData, PairData
from sie_evals.lib.tasks.mteb_tasks import MtebTaskData
from sie_evals.lib.tasks.retrieval import RetrievalData

TaskData = RetrievalData | ClassificationData | PairData | MtebTaskData


def _frames(data: TaskData) -> dict[str, pd.DataFrame]:
    if isinstance(data, RetrievalData):
        return {
            "corpus": pd.DataFrame({"id": data.corpus_ids, "text": data.corpus_texts}),
            "queries": pd.DataFrame({"id": data.query_ids, "text": data.query_texts}),
            "qrels": pd.DataFrame(
                [(q, d, s) for q, docs in data.qrels.items() for d, s in docs.items()],
                columns=["query_id", "doc_id", "score"],
            ),
        }
    if isinstance(data, ClassificationData):
        return {
            "train": pd.DataFrame({"text": data.train_texts, "label": data.train_labels}),
            "test": pd.DataFrame({"text": data.test_texts, "label": data.test_labels}),
        }
    return {"pairs": pd.DataFrame({"sentence1": data.sentence1, "sentence2": data.sentence2, "gold": data.gold})}


def write_snapshot(data: TaskData, folder: Path) -> Path:
    folder = Path(folder)
    if isinstance(data, MtebTaskData):
        return _write_mteb_snapshot(data, folder)
    for name, df in _frames(data).items():
        atomic_write(folder / f"{name}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
    meta = {**data.describe(), "data_type": type(data).__name__}
    if isinstance(data, ClassificationData):
        meta["label_names"] = data.label_names
    # Written last: a folder without it is incomplete and is not read.
    atomic_write_json(folder / "dataset.json", meta)
    return folder


def read_snapshot(folder: Path) -> TaskData:
    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path}: dataset snapshot missing or incomplete; rematerialize task_dataset")
    meta = json.loads(meta_path.read_text())

    def frame(name: str) -> pd.DataFrame:
        return pd.read_parquet(folder / f"{name}.parquet")

    if meta["data_type"] == "MtebTaskData":
        return _read_mteb_snapshot(folder, meta)
    common = {"task_id": meta["task"], "split": meta["split"], "origin": meta["origin"], "subset": meta.get("subset")}
    data: TaskData
    if meta["data_type"] == "RetrievalData":
        corpus, queries, qrels_df = frame("corpus"), frame("queries"), frame("qrels")
        qrels: dict[str, dict[str, int]] = {}
        for q, d, s in qrels_df.itertuples(index=False):
            qrels.setdefault(q, {})[d] = int(s)
        data = RetrievalData(
            corpus_ids=corpus["id"].tolist(),
            corpus_texts=corpus["text"].tolist(),
            query_ids=queries["id"].tolist(),
            query_texts=queries["text"].tolist(),
            qrels=qrels,
            **common,
        )
    elif meta["data_type"] == "ClassificationData":
        train, test = frame("train"), frame("test")
        data = ClassificationData(
            train_texts=train["text"].tolist(),
            train_labels=train["label"].tolist(),
            test_texts=test["text"].tolist(),
            test_labels=test["label"].tolist(),
            label_names=meta["label_names"],
            **common,
        )
    else:
        pairs = frame("pairs")
        data = PairData(
            sentence1=pairs["sentence1"].tolist(),
            sentence2=pairs["sentence2"].tolist(),
            gold=pairs["gold"].tolist(),
            **common,
        )
    if data.content_hash != meta["content_hash"]:
        raise DatasetError(f"{folder}: snapshot content does not match its recorded hash; rematerialize task_dataset")
    return data


# ---------------------------------------------------------------- MTEB task data


def _write_mteb_snapshot(data: MtebTaskData, folder: Path) -> Path:
    """The evaluated split as MTEB's evaluator reads it: Parquet per table (retrieval: corpus, queries, qrels;
    other types: each split of the task's dataset), plus the task name and subset to rebuild the task from."""
    from sie_evals.lib.tasks import mteb_local

    split_data = mteb_local._split_data(data.task, data.hf_subset, data.split)
    tables: dict[str, pd.DataFrame] = {}
    if mteb_local.is_retrieval_like(data.task):
        tables["corpus"] = split_data["corpus"].to_pandas()
        tables["queries"] = split_data["queries"].to_pandas()
        tables["qrels"] = pd.DataFrame(
            [(q, d, s) for q, docs in split_data["relevant_docs"].items() for d, s in docs.items()],
            columns=["query_id", "doc_id", "score"],
        )
        if split_data.get("top_ranked"):
            tables["top_ranked"] = pd.DataFrame(
                [(q, d) for q, docs in split_data["top_ranked"].items() for d in docs], columns=["query_id", "doc_id"]
            )
    else:
        dataset = data.task.dataset
        splits = dataset[data.hf_subset] if data.task.metadata.is_multilingual else dataset
        for name in splits:
            tables[f"split-{name}"] = splits[name].to_pandas()
    for name, df in tables.items():
        atomic_write(folder / f"{name}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
    meta = {
        **data.describe(),
        "data_type": "MtebTaskData",
        "mteb_name": data.task.metadata.name,
        "hf_subset": data.hf_subset,
        "tables": sorted(tables),
    }
    atomic_write_json(folder / "dataset.json", meta)
    return folder


def _read_mteb_snapshot(folder: Path, meta: dict) -> MtebTaskData:
    from datasets import Dataset, DatasetDict

    from sie_evals.lib.tasks import mteb_local
    from sie_evals.lib.tasks.mteb_tasks import get_mteb_task, rebuild_task_data

    task = get_mteb_task(meta["mteb_name"], meta["hf_subset"] if meta["hf_subset"] != "default" else None)
    task.filter_eval_splits([meta["split"]])

    def frame(name: str) -> pd.DataFrame:
        return pd.read_parquet(folder / f"{name}.parquet")

    if mteb_local.is_retrieval_like(task):
        qrels: dict[str, dict[str, int]] = {}
        for q, d, s in frame("qrels").itertuples(index=False):
            qrels.setdefault(q, {})[d] = int(s)
        top_ranked = None
        if "top_ranked" in meta["tables"]:
            top_ranked = {}
            for q, d in frame("top_ranked").itertuples(index=False):
                top_ranked.setdefault(q, []).append(d)
        split_data = {
            "corpus": Dataset.from_pandas(frame("corpus"), preserve_index=False),
            "queries": Dataset.from_pandas(frame("queries"), preserve_index=False),
            "relevant_docs": qrels,
            "top_ranked": top_ranked,
        }
        task.dataset = {meta["hf_subset"]: {meta["split"]: split_data}}
    else:
        dd = DatasetDict(
            {
                t.removeprefix("split-"): Dataset.from_pandas(frame(t), preserve_index=False)
                for t in meta["tables"]
                if t.startswith("split-")
            }
        )
        task.dataset = {meta["hf_subset"]: dd} if task.metadata.is_multilingual else dd
    task.data_loaded = True
    data = rebuild_task_data(meta["task"], task, meta["hf_subset"], meta["split"], meta["origin"], meta.get("subset"))
    if data.content_hash != meta["content_hash"]:
        raise DatasetError(f"{folder}: snapshot content does not match its recorded hash; rematerialize task_dataset")
    return data
