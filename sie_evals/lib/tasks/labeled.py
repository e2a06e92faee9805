"""Classification, pair-classification and STS data, from local files in the layouts of
../shared/data (Banking77 CSVs, TwitterURLCorpus TSV, STS Benchmark CSV). Every malformed row is
reported with its file and row number."""

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sie_evals.lib.core.errors import DatasetError
from sie_evals.lib.core.text_files import open_utf8, read_utf8
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.tasks.base import TaskDataBase
from sie_evals.lib.tasks.slicing import stable_sample
from sie_evals.lib.tasks.spec import STSRules, TaskSpec


def row_keys(texts: list[str]) -> list[str]:
    """Slicing keys of rows without ids: row number and text (slicing.stable_sample)."""
    return [f"{i}\x1f{text}" for i, text in enumerate(texts)]


def _hash(*sections: tuple[str, list[Any]]) -> str:
    h = hashlib.sha256()
    for name, values in sections:
        h.update(f"[{name}]\n".encode())
        for v in values:
            h.update(str(v).encode() + b"\x1e")
    return h.hexdigest()


@dataclass(frozen=True)
class ClassificationData(TaskDataBase):
    task_id: str
    split: str
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: list[str]
    origin: str
    subset: dict[str, int] | None = None
    content_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.content_hash:
            object.__setattr__(
                self,
                "content_hash",
                _hash(
                    ("labels", self.label_names),
                    ("train", list(zip(self.train_texts, self.train_labels, strict=True))),
                    ("test", list(zip(self.test_texts, self.test_labels, strict=True))),
                ),
            )

    @property
    def counts(self) -> dict[str, int]:
        return {"train": len(self.train_texts), "test": len(self.test_texts), "labels": len(self.label_names)}

    def snapshot_frames(self) -> dict[str, Any]:
        import pandas as pd

        return {
            "train": pd.DataFrame({"text": self.train_texts, "label": self.train_labels}),
            "test": pd.DataFrame({"text": self.test_texts, "label": self.test_labels}),
        }

    def snapshot_meta(self) -> dict[str, Any]:
        return {"label_names": self.label_names}

    @classmethod
    def from_snapshot(cls, common: dict[str, Any], meta: dict[str, Any], frame: Callable[[str], Any]):
        train, test = frame("train"), frame("test")
        return cls(
            train_texts=train["text"].tolist(),
            train_labels=train["label"].tolist(),
            test_texts=test["text"].tolist(),
            test_labels=test["label"].tolist(),
            label_names=meta["label_names"],
            **common,
        )

    def take_subset(self, limit: int, _corpus_size: int | None = None) -> "ClassificationData":
        """The first `limit` test rows by a hash of (row, text); the train split stays whole (MTEB
        samples from it per label anyway)."""
        keep = set(stable_sample(row_keys(self.test_texts), limit))
        return replace(
            self,
            test_texts=[t for i, t in enumerate(self.test_texts) if i in keep],
            test_labels=[y for i, y in enumerate(self.test_labels) if i in keep],
            subset={"limit": limit},
            content_hash="",
        )


@dataclass(frozen=True)
class PairData(TaskDataBase):
    """Sentence pairs with a binary label (pair classification) or a gold score (STS)."""

    task_id: str
    split: str
    sentence1: list[str]
    sentence2: list[str]
    gold: list[float]  # labels 0/1, or similarity scores
    origin: str
    subset: dict[str, int] | None = None
    content_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.content_hash:
            object.__setattr__(
                self,
                "content_hash",
                _hash(("pairs", list(zip(self.sentence1, self.sentence2, self.gold, strict=True)))),
            )

    @property
    def counts(self) -> dict[str, int]:
        return {"pairs": len(self.gold), "unique_texts": len(self.unique_texts())}

    def unique_texts(self) -> list[str]:
        """Each distinct sentence once (pairs repeat sentences), in first-seen order."""
        return list(dict.fromkeys([*self.sentence1, *self.sentence2]))

    def embedding_inputs(self) -> dict[EmbedKind, list[str]]:
        return {EmbedKind.query: self.unique_texts()}

    def snapshot_frames(self) -> dict[str, Any]:
        import pandas as pd

        return {"pairs": pd.DataFrame({"sentence1": self.sentence1, "sentence2": self.sentence2, "gold": self.gold})}

    @classmethod
    def from_snapshot(cls, common: dict[str, Any], meta: dict[str, Any], frame: Callable[[str], Any]) -> "PairData":
        pairs = frame("pairs")
        return cls(
            sentence1=pairs["sentence1"].tolist(),
            sentence2=pairs["sentence2"].tolist(),
            gold=pairs["gold"].tolist(),
            **common,
        )

    def take_subset(self, limit: int, _corpus_size: int | None = None) -> "PairData":
        pick = stable_sample(row_keys(self.sentence1), limit)
        return replace(
            self,
            sentence1=[self.sentence1[i] for i in pick],
            sentence2=[self.sentence2[i] for i in pick],
            gold=[self.gold[i] for i in pick],
            subset={"limit": limit},
            content_hash="",
        )


# ---------------------------------------------------------------- loaders


def _folder(spec: TaskSpec, data_root: Path) -> Path:
    folder = Path(data_root) / spec.local_dir
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no dataset folder for task {spec.task_id} under data root {data_root}")
    return folder


def _split_file(folder: Path, split: str, pattern: str, spec: TaskSpec) -> Path:
    path = folder / pattern.format(split=split)
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir() if p.is_file())
        raise DatasetError(f"{path}: no file for split {split!r} of {spec.task_id} (files there: {', '.join(found)})")
    return path


def load_banking77_layout(spec: TaskSpec, split: str, data_root: Path) -> ClassificationData:
    """`train.csv` and `<split>.csv` with columns text,category; `label_names.json` gives label ids."""
    folder = _folder(spec, data_root)
    names_path = folder / "label_names.json"
    try:
        label_names = json.loads(read_utf8(names_path, DatasetError))
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{names_path}: cannot read the label list ({err})") from None
    if not isinstance(label_names, list) or not all(isinstance(n, str) for n in label_names):
        raise DatasetError(f"{names_path}: expected a JSON list of label names")
    label_id = {n: i for i, n in enumerate(label_names)}

    def read(path: Path) -> tuple[list[str], list[int]]:
        texts, labels = [], []
        with open_utf8(path, DatasetError, translate_newlines=False) as fh:
            reader = csv.DictReader(fh)
            for column in ("text", "category"):
                if column not in (reader.fieldnames or []):
                    raise DatasetError(f"{path}: missing column '{column}' (header: {reader.fieldnames})")
            for row in reader:
                line = reader.line_num
                if not (row["text"] or "").strip():
                    raise DatasetError(f"{path}:{line}: empty text")
                if row["category"] not in label_id:
                    raise DatasetError(f"{path}:{line}: label {row['category']!r} is not in {names_path.name}")
                texts.append(row["text"])
                labels.append(label_id[row["category"]])
        if not texts:
            raise DatasetError(f"{path}: the split is empty")
        return texts, labels

    train_path = _split_file(folder, "train", "{split}.csv", spec)
    test_path = _split_file(folder, split, "{split}.csv", spec)
    train_texts, train_labels = read(train_path)
    test_texts, test_labels = read(test_path)
    return ClassificationData(
        spec.task_id, split, train_texts, train_labels, test_texts, test_labels, label_names, str(folder)
    )


def load_twitter_layout(spec: TaskSpec, split: str, data_root: Path) -> PairData:
    """`mteb_<split>.tsv`: sentence1 \\t sentence2 \\t label (0/1), no header."""
    path = _split_file(_folder(spec, data_root), split, "mteb_{split}.tsv", spec)
    s1, s2, gold = [], [], []
    with open_utf8(path, DatasetError, translate_newlines=False) as fh:
        for lineno, line in enumerate(fh, start=1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) != 3:
                raise DatasetError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(cols)}")
            if cols[2] not in ("0", "1"):
                raise DatasetError(f"{path}:{lineno}: label {cols[2]!r} is not 0 or 1")
            s1.append(cols[0])
            s2.append(cols[1])
            gold.append(float(cols[2]))
    if not gold:
        raise DatasetError(f"{path}: the split is empty")
    return PairData(spec.task_id, split, s1, s2, gold, str(path.parent))


def load_sts_layout(spec: TaskSpec, split: str, data_root: Path) -> PairData:
    """`sts-<split>.csv` (STS Benchmark release): tab-separated, no header; score in column 5,
    sentences in 6 and 7 (1-based), extra trailing columns ignored; sentences kept raw as MTEB does."""
    path = _split_file(_folder(spec, data_root), split, "sts-{split}.csv", spec)
    rules = spec.rules
    assert isinstance(rules, STSRules), f"{spec.task_id}: STS data needs STSRules, got {type(rules).__name__}"
    lo, hi = rules.min_score, rules.max_score
    s1, s2, gold = [], [], []
    with open_utf8(path, DatasetError) as fh:
        for lineno, line in enumerate(fh, start=1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 7:
                raise DatasetError(f"{path}:{lineno}: expected at least 7 tab-separated columns, got {len(cols)}")
            try:
                score = float(cols[4])
            except ValueError:
                raise DatasetError(f"{path}:{lineno}: score {cols[4]!r} is not a number") from None
            if not lo <= score <= hi:
                raise DatasetError(f"{path}:{lineno}: score {score} is outside {lo:g}-{hi:g}")
            s1.append(cols[5])
            s2.append(cols[6])
            gold.append(score)
    if not gold:
        raise DatasetError(f"{path}: the split is empty")
    return PairData(spec.task_id, split, s1, s2, gold, str(path.parent))
