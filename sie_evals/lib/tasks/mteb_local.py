"""Local folders and slices for MTEB task instances: data put where MTEB's evaluators read it
(`task.dataset`, `task.data_loaded`), in the shape MTEB's own loaders build."""

import hashlib
from pathlib import Path
from typing import Any

from sie_evals.lib.core.errors import DatasetError
from sie_evals.lib.tasks.labeled import row_keys
from sie_evals.lib.tasks.slicing import stable_sample
from sie_evals.lib.tasks.spec import ClassificationRules, PairClassificationRules, STSRules, TaskRules, TaskSpec


def is_retrieval_like(task: Any) -> bool:
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return isinstance(task, AbsTaskRetrieval)


def _place(task: Any, hf_subset: str, value: Any, keyed_by_subset: bool) -> None:
    task.dataset = {hf_subset: value} if keyed_by_subset else value
    task.data_loaded = True


def _spec_for(task: Any, folder: Path, kind: str, rules: TaskRules) -> TaskSpec:
    """The native loaders take a TaskSpec; this one points at `folder`."""
    return TaskSpec(task_id=f"mteb/{task.metadata.name}", type=kind, local_dir=folder.name, rules=rules)


def _sts_rules(task: Any) -> STSRules:
    """The task's own gold score range."""
    return STSRules(min_score=float(getattr(task, "min_score", 0)), max_score=float(getattr(task, "max_score", 5)))


def load_folder(task: Any, folder: Path, hf_subset: str, split: str) -> tuple[str, ...]:
    """Fill `task` from a local folder (see mteb_tasks' module doc for the layouts); returns data warnings."""
    from datasets import Dataset, DatasetDict, load_dataset

    from sie_evals.lib.tasks import labeled
    from sie_evals.lib.tasks.retrieval import read_beir_folder

    multilingual = task.metadata.is_multilingual
    if is_retrieval_like(task):
        if not (folder / "corpus.jsonl").is_file():
            raise DatasetError(f"{folder}: expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/{split}.tsv)")
        data = read_beir_folder(folder, split, f"mteb/{task.metadata.name}")
        split_data = {
            "corpus": Dataset.from_dict({"id": data.corpus_ids, "text": data.corpus_texts}),
            "queries": Dataset.from_dict({"id": data.query_ids, "text": data.query_texts}),
            "relevant_docs": data.qrels,
            "top_ranked": _read_top_ranked(folder, split),
        }
        # retrieval data is always keyed by subset ("default" for monolingual tasks), as MTEB's loader does
        _place(task, hf_subset, {split: split_data}, keyed_by_subset=True)
        return data.warnings

    ttype = task.metadata.type
    spec_root = folder.parent
    native: Any = None
    if ttype == "Classification" and (folder / "train.csv").is_file() and (folder / "label_names.json").is_file():
        d = labeled.load_banking77_layout(
            _spec_for(task, folder, "classification", ClassificationRules()), split, spec_root
        )
        native = DatasetDict(
            {
                "train": Dataset.from_dict(
                    {task.input_column_name: d.train_texts, task.label_column_name: d.train_labels}
                ),
                split: Dataset.from_dict({task.input_column_name: d.test_texts, task.label_column_name: d.test_labels}),
            }
        )
    elif ttype == "PairClassification" and (folder / f"mteb_{split}.tsv").is_file():
        d = labeled.load_twitter_layout(
            _spec_for(task, folder, "pair_classification", PairClassificationRules()), split, spec_root
        )
        native = DatasetDict(
            {
                split: Dataset.from_dict(
                    {
                        task.input1_column_name: d.sentence1,
                        task.input2_column_name: d.sentence2,
                        task.label_column_name: [int(g) for g in d.gold],
                    }
                )
            }
        )
    elif ttype == "STS" and (folder / f"sts-{split}.csv").is_file():
        d = labeled.load_sts_layout(_spec_for(task, folder, "sts", _sts_rules(task)), split, spec_root)
        c1, c2 = task.column_names
        native = DatasetDict({split: Dataset.from_dict({c1: d.sentence1, c2: d.sentence2, "score": d.gold})})
    if native is not None:  # already in the evaluator's columns: no dataset_transform
        _place(task, hf_subset, native, keyed_by_subset=multilingual)
        return ()

    files: dict[str, str] = {}
    for name in {split, "train"}:
        for ext in ("jsonl", "parquet"):
            if (folder / f"{name}.{ext}").is_file():
                files[name] = str(folder / f"{name}.{ext}")
    if split not in files:
        present = sorted(p.name for p in folder.iterdir())
        raise DatasetError(
            f"{folder}: no data for split {split!r} of MTEB task {task.metadata.name} ({ttype}): expected "
            f"{split}.jsonl or {split}.parquet in the hub dataset's columns "
            f"(files there: {', '.join(present) or 'none'})"
        )
    builder = "parquet" if files[split].endswith(".parquet") else "json"
    try:
        ds = load_dataset(builder, data_files=files)
    except Exception as err:  # datasets wraps parse errors in several types
        raise DatasetError(f"{files[split]}: cannot read ({type(err).__name__}: {err})") from None
    _place(task, hf_subset, ds, keyed_by_subset=multilingual)
    task.dataset_transform()  # the hub dataset's columns -> the evaluator's, as MTEB's load_data does
    return ()


def _read_top_ranked(folder: Path, split: str) -> dict[str, list[str]] | None:
    """Reranking candidates: `top_ranked/<split>.tsv` with query-id \\t corpus-id rows (optional)."""
    path = folder / "top_ranked" / f"{split}.tsv"
    if not path.is_file():
        return None
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        cols = line.split("\t")
        if lineno == 1 and cols[0].lower() in ("query-id", "query_id", "qid"):
            continue
        if len(cols) != 2:
            raise DatasetError(f"{path}:{lineno}: expected 2 tab-separated columns (query-id, corpus-id)")
        out.setdefault(cols[0], []).append(cols[1])
    return out


def _split_data(task: Any, hf_subset: str, split: str) -> Any:
    ds = task.dataset
    if isinstance(ds, dict) and hf_subset in ds and not (split in ds and hf_subset == split):
        return ds[hf_subset][split]
    return ds[split]


def _set_split_data(task: Any, hf_subset: str, split: str, value: Any) -> None:
    ds = task.dataset
    if isinstance(ds, dict) and hf_subset in ds:
        ds[hf_subset][split] = value
    else:
        ds[split] = value


def _corpus_texts(corpus: Any) -> list[str]:
    """MTEB's document text (title + " " + text when there is a title)."""
    titles = corpus["title"] if "title" in corpus.column_names else [None] * len(corpus)
    return [(f"{t} {x}".strip() if t else x) for t, x in zip(titles, corpus["text"], strict=True)]


def slice_task(task: Any, hf_subset: str, split: str, limit: int, corpus_size: int | None) -> None:
    """The project's deterministic slices on MTEB data: retrieval as RetrievalData.take_subset (queries by id
    hash, their judged docs, other docs by id hash), other types `limit` rows of the eval split by row hash."""
    from datasets import Dataset

    from sie_evals.lib.tasks.retrieval import RetrievalData

    data = _split_data(task, hf_subset, split)
    if is_retrieval_like(task):
        corpus, queries, qrels = data["corpus"], data["queries"], data["relevant_docs"]
        full = RetrievalData(
            task_id=task.metadata.name,
            split=split,
            corpus_ids=list(corpus["id"]),
            corpus_texts=_corpus_texts(corpus),
            query_ids=[q for q in queries["id"] if q in qrels],
            query_texts=[t for q, t in zip(queries["id"], queries["text"], strict=True) if q in qrels],
            qrels={q: dict(d) for q, d in qrels.items()},
            origin="",
        )
        part = full.take_subset(limit, corpus_size)
        keep_docs, keep_queries = set(part.corpus_ids), set(part.query_ids)
        data = dict(data)
        data["corpus"] = corpus.select([i for i, d in enumerate(corpus["id"]) if d in keep_docs])
        data["queries"] = queries.select([i for i, q in enumerate(queries["id"]) if q in keep_queries])
        data["relevant_docs"] = {q: d for q, d in qrels.items() if q in keep_queries}
        if data.get("top_ranked"):
            data["top_ranked"] = {q: d for q, d in data["top_ranked"].items() if q in keep_queries}
        _set_split_data(task, hf_subset, split, data)
        return
    if len(data) == 1 and all(isinstance(data[0][c], list) for c in data.column_names):
        data = Dataset.from_dict(data[0])  # MTEB v1 layout: the whole split in one row of lists
    if len(data) > limit:
        # the native slices' rule (labeled.py): rows ranked by a hash of (row, first text), so both backends agree
        texts = data[_first_text_column(task, data)]
        keep = stable_sample(row_keys([str(t) for t in texts]), limit)
        data = data.select(keep)
    _set_split_data(task, hf_subset, split, data)


def _first_text_column(task: Any, data: Any) -> str:
    candidates = [getattr(task, "input_column_name", None), getattr(task, "input1_column_name", None)]
    candidates += list(getattr(task, "column_names", ()) or ())
    return next((c for c in candidates if isinstance(c, str) and c in data.column_names), data.column_names[0])


def counts_and_hash(task: Any, hf_subset: str, split: str) -> tuple[dict[str, int], str]:
    """Counts for the report and a sha256 over the evaluated split's content."""
    data = _split_data(task, hf_subset, split)
    h = hashlib.sha256()
    if is_retrieval_like(task):
        for name in ("corpus", "queries"):
            ds = data[name]
            h.update(f"[{name}]".encode())
            for item_id, text in sorted(
                zip(ds["id"], _corpus_texts(ds) if name == "corpus" else ds["text"], strict=True)
            ):
                h.update(f"{item_id}\x1f{text}\x1e".encode())
        for q in sorted(data["relevant_docs"]):
            for d, s in sorted(data["relevant_docs"][q].items()):
                h.update(f"{q}\x1f{d}\x1f{s}\x1e".encode())
        counts = {
            "corpus": len(data["corpus"]),
            "queries": len(data["queries"]),
            "qrels": sum(len(d) for d in data["relevant_docs"].values()),
        }
        return counts, h.hexdigest()
    for column in data.column_names:
        h.update(f"[{column}]".encode())
        for value in data[column]:
            h.update(str(value).encode() + b"\x1e")
    return {"rows": len(data)}, h.hexdigest()
