"""Task data as Parquet (the `task_dataset` asset's on-disk form) and back. Each data type owns its format
(`snapshot_frames`, `snapshot_meta`, `from_snapshot`: lib/tasks/base.py); this module writes and reads any
registered one."""

import json
from pathlib import Path
from typing import Any

import pandas as pd

from sie_evals.lib.core.atomic import atomic_write, atomic_write_json
from sie_evals.lib.core.errors import DatasetError
from sie_evals.lib.tasks.base import TaskDataBase
from sie_evals.lib.tasks.labeled import ClassificationData, PairData
from sie_evals.lib.tasks.mteb_tasks import MtebTaskData
from sie_evals.lib.tasks.retrieval import RetrievalData

# data_type (the class name a snapshot records) -> the class that reads it back
_DATA_TYPES: dict[str, type[Any]] = {c.__name__: c for c in (RetrievalData, ClassificationData, PairData, MtebTaskData)}


def register_data_type(cls: type[Any]) -> None:
    """A task type's own data class (lib/quality/task_types.register_task_type registers each type's)."""
    _DATA_TYPES.setdefault(cls.__name__, cls)


def write_snapshot(data: TaskDataBase, folder: Path) -> Path:
    folder = Path(folder)
    register_data_type(type(data))
    frames: dict[str, pd.DataFrame] = data.snapshot_frames()  # type: ignore[attr-defined]
    for name, df in frames.items():
        atomic_write(folder / f"{name}.parquet", lambda tmp, df=df: df.to_parquet(tmp, index=False))
    meta = {**data.describe(), "data_type": type(data).__name__, "tables": sorted(frames), **data.snapshot_meta()}
    # Written last: a folder without it is incomplete and is not read.
    atomic_write_json(folder / "dataset.json", meta)
    return folder


def read_snapshot(folder: Path) -> Any:
    folder = Path(folder)
    meta_path = folder / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path}: dataset snapshot missing or incomplete; rematerialize task_dataset")
    meta = json.loads(meta_path.read_text())
    data_class = _DATA_TYPES.get(meta.get("data_type"))
    if data_class is None:
        raise DatasetError(
            f"{meta_path}: data_type {meta.get('data_type')!r} is not a registered task data type "
            f"(known: {', '.join(sorted(_DATA_TYPES))}); rematerialize task_dataset"
        )

    def frame(name: str) -> pd.DataFrame:
        return pd.read_parquet(folder / f"{name}.parquet")

    common = {"task_id": meta["task"], "split": meta["split"], "origin": meta["origin"], "subset": meta.get("subset")}
    data = data_class.from_snapshot(common, meta, frame)
    if data.content_hash != meta["content_hash"]:
        raise DatasetError(f"{folder}: snapshot content does not match its recorded hash; rematerialize task_dataset")
    return data
