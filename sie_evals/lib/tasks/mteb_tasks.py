"""Any text task in the installed mteb's registry, through MTEB's own task definitions.

A task is `mteb/<TaskName>` or `mteb/<TaskName>/<subset>` (a language subset of a multi-subset task). Its
data comes, in this order, from:

1. a folder under the data root: `<root>/<folder>/` (or `<root>/<folder>/<subset>/`), where `<folder>` is the
   native task's folder when the project has one, else the task name or the last part of its hub dataset path,
   lower-cased. It holds either this project's layout for the task type (BEIR for retrieval/reranking,
   `train.csv`/`<split>.csv` for classification, `mteb_<split>.tsv` for pair classification, `sts-<split>.csv`
   for STS: converted to the columns MTEB's evaluator reads) or `<split>.jsonl` / `<split>.parquet` in the
   hub dataset's own columns, to which the task's `dataset_transform` is applied as MTEB does;
2. the Hugging Face hub through `datasets`, at the revision MTEB pins (`task.load_data()`), which also reads the
   local HF cache when `HF_HUB_OFFLINE=1`.

Every rule (splits, main score, k values, ignore_identical_ids, subsampling, seeds...) is MTEB's.
"""

import hashlib
import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import DatasetError, InputError
from sie_evals.lib.tasks.base import TaskDataBase
from sie_evals.lib.tasks.retrieval import DEFAULT_SUBSET_CORPUS_SIZE

log = logging.getLogger(__name__)


def mteb_version() -> str:
    return importlib.metadata.version("mteb")


@cache
def _all_tasks() -> tuple[Any, ...]:
    import mteb

    return tuple(mteb.get_tasks())


def text_tasks() -> list[Any]:
    """Every task of the installed mteb whose inputs are text only."""
    return [t for t in _all_tasks() if list(t.metadata.modalities) == ["text"]]


def subsets(task: Any) -> list[str]:
    return list(task.metadata.hf_subsets or ["default"])


def get_mteb_task(name: str, hf_subset: str | None = None) -> Any:
    """A fresh task instance (restricted to `hf_subset` when given). Unknown names and subsets are input errors
    that say what exists."""
    import mteb

    try:
        task = mteb.get_task(name)
    except KeyError as err:
        raise InputError(
            f"unknown MTEB task {name!r} (mteb {mteb_version()}): {err.args[0] if err.args else err}; "
            "`sie-bench tasks --search TEXT` lists the tasks mteb knows"
        ) from None
    if list(task.metadata.modalities) != ["text"]:
        raise InputError(
            f"MTEB task {name} takes {'+'.join(task.metadata.modalities)} inputs; only text tasks can be evaluated"
        )
    if hf_subset is not None:
        if hf_subset not in subsets(task):
            raise InputError(f"MTEB task {name} has no subset {hf_subset!r}; its subsets: {', '.join(subsets(task))}")
        if task.metadata.is_multilingual:
            task = mteb.get_task(name, hf_subsets=[hf_subset])
    return task


def task_metadata(task: Any, hf_subset: str | None = None) -> dict[str, Any]:
    m = task.metadata
    return {
        "name": m.name,
        "type": m.type,
        "main_score": m.main_score,
        "eval_splits": list(m.eval_splits),
        "subsets": subsets(task),
        "subset": hf_subset or "default",
        "languages": list(m.languages),
        "dataset_path": m.dataset["path"],
        "dataset_revision": m.dataset.get("revision"),
        "mteb_version": mteb_version(),
    }


def retrieval_rules_by_folder() -> dict[str, Any]:
    """MTEB's retrieval tasks keyed by the lower-cased BEIR folder name their data would have: the task name and
    the last part of the hub dataset path (`mteb/quora` -> `quora`, QuoraRetrieval -> `quoraretrieval`)."""
    index: dict[str, Any] = {}
    for task in text_tasks():
        if task.metadata.type != "Retrieval" or task.metadata.is_multilingual:
            continue
        for key in (task.metadata.dataset["path"].rsplit("/", 1)[-1].lower(), task.metadata.name.lower()):
            index.setdefault(key, task)
    return index


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class MtebTaskData(TaskDataBase):
    """An MTEB task instance with its data loaded for one split and subset."""

    task_id: str
    split: str
    hf_subset: str
    task: Any = field(repr=False, compare=False)
    origin: str = ""
    subset: dict[str, int] | None = None  # the --limit-queries slice, if any
    content_hash: str = ""
    item_counts: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.item_counts)

    @property
    def variant(self) -> str:
        """As the native data's: split, split@q<N>-c<M> (retrieval slice) or split@n<N> (other slices)."""
        if not self.subset:
            return self.split
        if "corpus_size" in self.subset:
            return f"{self.split}@q{self.subset['limit_queries']}-c{self.subset['corpus_size']}"
        return f"{self.split}@n{self.subset['limit']}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mteb": task_metadata(self.task, self.hf_subset)}

    def snapshot_frames(self) -> dict[str, Any]:
        """The evaluated split as MTEB's evaluator reads it: a table each (retrieval: corpus, queries, qrels;
        other types: each split of the task's dataset, `split-<name>`); snapshot_meta names the task and subset."""
        import pandas as pd

        from sie_evals.lib.tasks import mteb_local

        split_data = mteb_local._split_data(self.task, self.hf_subset, self.split)
        tables: dict[str, Any] = {}
        if mteb_local.is_retrieval_like(self.task):
            tables["corpus"] = split_data["corpus"].to_pandas()
            tables["queries"] = split_data["queries"].to_pandas()
            tables["qrels"] = pd.DataFrame(
                [(q, d, s) for q, docs in split_data["relevant_docs"].items() for d, s in docs.items()],
                columns=["query_id", "doc_id", "score"],
            )
            if split_data.get("top_ranked"):
                tables["top_ranked"] = pd.DataFrame(
                    [(q, d) for q, docs in split_data["top_ranked"].items() for d in docs],
                    columns=["query_id", "doc_id"],
                )
        else:
            dataset = self.task.dataset
            splits = dataset[self.hf_subset] if self.task.metadata.is_multilingual else dataset
            for name in splits:
                tables[f"split-{name}"] = splits[name].to_pandas()
        return tables

    def snapshot_meta(self) -> dict[str, Any]:
        return {"mteb_name": self.task.metadata.name, "hf_subset": self.hf_subset}

    @classmethod
    def from_snapshot(cls, common: dict[str, Any], meta: dict[str, Any], frame: Any) -> "MtebTaskData":
        from datasets import Dataset, DatasetDict

        from sie_evals.lib.tasks import mteb_local

        task = get_mteb_task(meta["mteb_name"], meta["hf_subset"] if meta["hf_subset"] != "default" else None)
        task.filter_eval_splits([meta["split"]])
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
        return rebuild_task_data(
            common["task_id"], task, meta["hf_subset"], common["split"], common["origin"], common["subset"]
        )


def candidate_folders(task: Any, native_dir: str | None) -> list[str]:
    names = [native_dir] if native_dir else []
    names += [task.metadata.name.lower(), task.metadata.dataset["path"].rsplit("/", 1)[-1].lower()]
    return list(dict.fromkeys(n for n in names if n))


def local_folder(task: Any, hf_subset: str, data_root: Path | None, native_dir: str | None) -> Path | None:
    if data_root is None:
        return None
    for name in candidate_folders(task, native_dir):
        base = Path(data_root) / name
        folder = base / hf_subset if task.metadata.is_multilingual else base
        if folder.is_dir():
            return folder
    return None


def hub_cache_snapshot(task: Any) -> Path | None:
    """The snapshot folder of the task's dataset at MTEB's pinned revision in the local Hugging Face hub cache
    ($HF_HUB_CACHE, else $HF_HOME/hub), found by huggingface_hub itself; None when it is not there.

    `datasets.load_dataset("org/name")` needs the hub API even for cached files when HF_HUB_OFFLINE=1 is unset and
    refuses the hub cache when it is set, so a cached snapshot is read as a local dataset folder (its README's
    configs, as on the hub)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    revision = task.metadata.dataset.get("revision")
    if not revision:
        return None
    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None
    )
    try:
        folder = snapshot_download(
            task.metadata.dataset["path"],
            repo_type="dataset",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=True,
        )
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        return None
    return Path(folder)


def _missing_data_error(task: Any, hf_subset: str, split: str, data_root: Path | None, err: Exception) -> DatasetError:
    folders = candidate_folders(task, None)
    where = "/".join(["<data root>", folders[0], *([hf_subset] if task.metadata.is_multilingual else [])])
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    return DatasetError(
        f"no data for MTEB task {task.metadata.name} (subset {hf_subset}, split {split}): "
        f"{'not in the local Hugging Face cache (HF_HUB_OFFLINE=1)' if offline else 'the hub could not be reached'} "
        f"for {task.metadata.dataset['path']}@{task.metadata.dataset.get('revision')} "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Put it in a folder {where}/ "
        f"(data root: ${paths.DATA_DIR_ENV} or --data-dir{f', now {data_root}' if data_root else ', unset'}), "
        "or the hub snapshot in the Hugging Face cache ($HF_HUB_CACHE / $HF_HOME), or unset HF_HUB_OFFLINE to "
        "download it"
    )


def _hash_rows(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode() + b"\x1e")
    return h.hexdigest()


def _split_of(task: Any, hf_subset: str, split: str) -> Any:
    dataset = task.dataset
    if task.metadata.is_multilingual or (isinstance(dataset, dict) and hf_subset in dataset):
        return dataset[hf_subset][split]
    return dataset[split]


def load_mteb_task_data(
    task_id: str,
    task: Any,
    hf_subset: str | None,
    split: str | None,
    data_root: Path | None,
    native_dir: str | None = None,
    limit: int | None = None,
    corpus_size: int | None = None,
) -> MtebTaskData:
    from sie_evals.lib.tasks import mteb_local

    hf_subset = hf_subset or subsets(task)[0]
    split = split or task.metadata.eval_splits[0]
    if split not in task.metadata.eval_splits:
        raise InputError(
            f"MTEB task {task.metadata.name} has no eval split {split!r}; its splits: "
            f"{', '.join(task.metadata.eval_splits)}"
        )
    task.filter_eval_splits([split])
    folder = local_folder(task, hf_subset, data_root, native_dir)
    warnings: tuple[str, ...] = ()
    if folder is not None:
        warnings = mteb_local.load_folder(task, folder, hf_subset, split)
        origin = str(folder)
    else:
        origin = f"hf://{task.metadata.dataset['path']}@{task.metadata.dataset.get('revision')}"
        snapshot = hub_cache_snapshot(task)
        original = task.metadata
        if snapshot is not None:  # the pinned revision is in the hub cache: read it there (no network needed)
            task.metadata = original.model_copy(update={"dataset": {**original.dataset, "path": str(snapshot)}})
            origin = f"hf-cache://{original.dataset['path']}@{original.dataset.get('revision')} ({snapshot})"
        try:
            task.load_data()
        except Exception as err:  # datasets/hub raise many types; all mean "no data"
            task.metadata = original
            raise _missing_data_error(task, hf_subset, split, data_root, err) from None
        task.metadata = original
    subset_info = None
    if limit:
        mteb_local.slice_task(task, hf_subset, split, limit, corpus_size)
        if mteb_local.is_retrieval_like(task):
            corpus_size = corpus_size or DEFAULT_SUBSET_CORPUS_SIZE
            subset_info = {"limit_queries": limit, "corpus_size": corpus_size}
        else:
            subset_info = {"limit": limit}
    return rebuild_task_data(task_id, task, hf_subset, split, origin, subset_info, warnings)


def rebuild_task_data(
    task_id: str,
    task: Any,
    hf_subset: str,
    split: str,
    origin: str,
    subset_info: dict[str, int] | None,
    warnings: tuple[str, ...] = (),
) -> MtebTaskData:
    """MtebTaskData around a task whose data is loaded (counts and content hash computed from it)."""
    from sie_evals.lib.tasks import mteb_local

    counts, digest = mteb_local.counts_and_hash(task, hf_subset, split)
    return MtebTaskData(
        task_id=task_id,
        split=split,
        hf_subset=hf_subset,
        task=task,
        origin=origin,
        subset=subset_info,
        content_hash=_hash_rows(task.metadata.name, task.metadata.dataset, hf_subset, split, digest),
        item_counts=counts,
        warnings=warnings,
    )
