"""A toy task type in one file: nearest-centroid classification. Each label's centroid is the mean of the
embeddings of its first `per_label` training texts; a test text gets the label of the nearest centroid by
cosine. Everything a type owns is here: rules model, data type and loader, inputs, scoring, headline metrics
and the task it brings. test_toy_task_type.py registers it with one line and runs it from the CLI and Dagster."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sie_evals.lib.core import paths
from sie_evals.lib.engines.base import EmbedKind
from sie_evals.lib.quality.task_types import TaskType
from sie_evals.lib.tasks.labeled import ClassificationData, load_banking77_layout
from sie_evals.lib.tasks.spec import TaskRules, TaskSpec

TASK_ID = "toy/Banking77Centroid"


class CentroidRules(TaskRules):
    main_score: str = "centroid_accuracy"
    target_metrics: tuple[str, ...] = ("centroid_accuracy", "centroid_macro_f1")
    per_label: int = 4  # training texts averaged into each label's centroid


class NearestCentroidTaskType(TaskType):
    name = "nearest_centroid"
    rules_model = CentroidRules
    data_type = ClassificationData  # its snapshot format too
    table_metrics = ("centroid_accuracy", "centroid_macro_f1")
    tasks = (TaskSpec(task_id=TASK_ID, type="nearest_centroid", local_dir="banking77", rules=CentroidRules()),)

    def load(self, split: str | None, data_root: Path | None) -> ClassificationData:
        return load_banking77_layout(self.spec, split or self.spec.default_split, Path(data_root or paths.data_dir()))

    def _train_rows(self, data: ClassificationData) -> list[int]:
        seen: dict[int, int] = {}
        rows = []
        for i, label in enumerate(data.train_labels):
            if seen.get(label, 0) < self.rules.per_label:
                seen[label] = seen.get(label, 0) + 1
                rows.append(i)
        return rows

    def inputs(self, data: ClassificationData) -> dict[EmbedKind, list[str]]:
        texts = [data.train_texts[i] for i in self._train_rows(data)] + data.test_texts
        return {EmbedKind.query: list(dict.fromkeys(texts))}

    def score(self, data: ClassificationData, vectors: dict[EmbedKind, Any], similarity: str = "cosine"):
        from sklearn.metrics import f1_score

        vec = dict(zip(self.inputs(data)[EmbedKind.query], vectors[EmbedKind.query], strict=True))
        rows = self._train_rows(data)
        labels = sorted({data.train_labels[i] for i in rows})
        centroids = np.stack(
            [np.mean([vec[data.train_texts[i]] for i in rows if data.train_labels[i] == y], axis=0) for y in labels]
        )
        test = np.stack([vec[t] for t in data.test_texts])
        cos = (test / np.linalg.norm(test, axis=1, keepdims=True)) @ (
            centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        ).T
        predicted = [labels[j] for j in cos.argmax(axis=1)]
        correct = [float(p == y) for p, y in zip(predicted, data.test_labels, strict=True)]
        metrics = {
            "centroid_accuracy": float(np.mean(correct)),
            "centroid_macro_f1": float(f1_score(data.test_labels, predicted, average="macro")),
        }
        frame = pd.DataFrame(
            {
                "query_id": [str(i) for i in range(len(correct))],
                "label": data.test_labels,
                "predicted": predicted,
                "centroid_accuracy": correct,
            }
        )
        return metrics, frame
