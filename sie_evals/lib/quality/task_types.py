"""Task types as classes, MTEB's way (mteb's AbsTask: load -> inputs -> score -> main score): each type is one
class owning its rules model, data type and loader, what it embeds, how it is scored, its headline metrics,
which vector outputs it accepts and its perf workload. `TASK_TYPES` maps `TaskSpec.type` to the class, one line
per type; `register_task_type` adds one (with the tasks it brings) at run time.

The native types (retrieval, classification, pair classification, STS) are this project's implementations,
kept where they are proven equal to MTEB on real data (tests) and earn their place: per-query scores, chunked
exact search over memory-mapped corpora, deterministic slices. `MtebTaskType` runs any other text task (and
any native one with `--backend mteb`) through MTEB's own task code and evaluators.
"""

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from sie_evals.lib.config.model_config import ResolvedProfile
from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import ConfigError, InputError
from sie_evals.lib.engines.base import EmbedKind, Engine
from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache
from sie_evals.lib.engines.muvera import postprocess
from sie_evals.lib.engines.vectors import similarity as profile_similarity
from sie_evals.lib.quality import scoring
from sie_evals.lib.quality.ranking import Ranking
from sie_evals.lib.tasks import labeled, snapshot
from sie_evals.lib.tasks.base import TaskDataBase
from sie_evals.lib.tasks.labeled import ClassificationData, PairData
from sie_evals.lib.tasks.mteb_tasks import MtebTaskData
from sie_evals.lib.tasks.registry import register_task, unregister_task
from sie_evals.lib.tasks.retrieval import RetrievalData, load_retrieval_data
from sie_evals.lib.tasks.spec import (
    ClassificationRules,
    FinesseRules,
    MtebRules,
    PairClassificationRules,
    RetrievalRules,
    STSRules,
    TaskRules,
    TaskSpec,
)

Scores = tuple[dict[str, float], pd.DataFrame]
PERF_WORKLOADS = ("corpus", "queries")


class TaskType(ABC):
    """One task type. A subclass sets the class attributes and implements load, inputs and score."""

    name: ClassVar[str]
    rules_model: ClassVar[type[TaskRules]]
    data_type: ClassVar[type[TaskDataBase]]
    # the metrics a report table and Dagster metadata show; None: the result's own top-level metrics
    table_metrics: ClassVar[tuple[str, ...] | None] = None
    # scored on dense vectors with cosine only (sparse, multivector and MUVERA outputs are refused up front)
    dense_only: ClassVar[bool] = True
    # tasks this type brings, registered with it (register_task_type)
    tasks: ClassVar[tuple[TaskSpec, ...]] = ()

    def __init__(self, spec: TaskSpec):
        if not isinstance(spec.rules, self.rules_model):
            raise ConfigError(
                f"task {spec.task_id}: a {self.name} task's rules are {self.rules_model.__name__}, "
                f"got {type(spec.rules).__name__}"
            )
        self.spec = spec

    @property
    def rules(self) -> Any:
        return self.spec.rules

    @property
    def main_score(self) -> str:
        return self.spec.rules.main_score

    @abstractmethod
    def load(self, split: str | None, data_root: Path | None) -> Any:
        """The task's data for one split (unsliced)."""

    def take_subset(self, data: Any, limit: int, corpus_size: int | None) -> Any:
        """The deterministic --limit-queries slice (lib/tasks/slicing.py)."""
        return data.take_subset(limit, corpus_size)

    @abstractmethod
    def inputs(self, data: Any) -> dict[EmbedKind, list[str]]:
        """The texts to embed before scoring, per kind."""

    @abstractmethod
    def score(self, data: Any, vectors: dict[EmbedKind, Any], similarity: str = "cosine") -> Scores:
        """Metrics and per-item scores; `similarity`: engines.vectors.similarity(profile)."""

    def check_profile(self, profile: ResolvedProfile) -> None:
        """Refuse, before anything is embedded, a profile whose outputs this type cannot score."""
        if self.dense_only and profile_similarity(profile) != "cosine":
            raise InputError(
                f"{self.spec.task_id}: {self.name} tasks are scored on dense vectors with cosine; profile "
                f"{profile.name!r} ({profile.output.value}{', MUVERA' if profile.muvera else ''}) is evaluated on "
                "retrieval tasks only"
            )

    def embed(self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats) -> dict[EmbedKind, Any]:
        self.check_profile(engine.profile)
        return {
            # MUVERA profiles: the cache holds the token vectors, the FDE is computed from them (engines/muvera.py)
            kind: postprocess(engine.profile, kind == EmbedKind.query, cache.embed(engine, texts, kind, stats))
            for kind, texts in self.inputs(data).items()
        }

    def evaluate(
        self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats
    ) -> tuple[dict[str, float], pd.DataFrame, dict[str, Any], dict[EmbedKind, Any] | None]:
        """embed -> score in one go; returns metrics, per-item scores, extra report fields and the vectors."""
        vectors = self.embed(data, engine, cache, stats)
        metrics, per_item = self.score(data, vectors, profile_similarity(engine.profile))
        return metrics, per_item, {}, vectors

    def perf_texts(self, data: Any, workload: str) -> tuple[EmbedKind, list[str]]:
        """What a perf run sends: symmetric tasks encode every text the same way, whatever the workload name."""
        return EmbedKind.query, self.inputs(data)[EmbedKind.query]

    def _dense_lookup(self, data: Any, vectors: dict[EmbedKind, Any], similarity: str) -> dict[str, np.ndarray]:
        if similarity != "cosine" or not all(isinstance(v, np.ndarray) for v in vectors.values()):
            raise InputError(
                f"{self.spec.task_id}: {self.name} tasks are scored on dense vectors with cosine; "
                f"this profile's output ({similarity}) is evaluated on retrieval tasks only"
            )
        return scoring.lookup(self.inputs(data)[EmbedKind.query], vectors[EmbedKind.query])


class RetrievalTaskType(TaskType):
    name = "retrieval"
    rules_model = RetrievalRules
    data_type = RetrievalData
    table_metrics = (
        "ndcg_at_10",
        "map_at_10",
        "recall_at_10",
        "precision_at_10",
        "mrr_at_10",
        "ndcg_at_1",
        "ndcg_at_100",
        "map_at_100",
        "recall_at_100",
        "recall_at_1000",
    )
    dense_only = False

    def load(self, split: str | None, data_root: Path | None) -> RetrievalData:
        return load_retrieval_data(self.spec, split or self.spec.default_split, data_root)

    def inputs(self, data: RetrievalData) -> dict[EmbedKind, list[str]]:
        return {EmbedKind.query: data.query_texts, EmbedKind.document: data.corpus_texts}

    def score(self, data: RetrievalData, vectors: dict[EmbedKind, Any], similarity: str = "cosine") -> Scores:
        return scoring.score_retrieval(
            self.rules, data, vectors[EmbedKind.query], vectors[EmbedKind.document], similarity
        )

    def evaluate(self, data: RetrievalData, engine: Engine, cache: EmbeddingCache, stats: CacheStats):
        """Also keeps the ranking the metrics came from, as extra["ranking"] (the harness takes it out of
        the report: --save-run and saved results write it)."""
        vectors = self.embed(data, engine, cache, stats)
        similarity = profile_similarity(engine.profile)
        queries, documents = vectors[EmbedKind.query], vectors[EmbedKind.document]
        top = scoring.retrieval_top_k(self.rules, queries, documents, similarity)
        metrics, per_query = scoring.score_retrieval(self.rules, data, queries, documents, similarity, top)
        rules = self.rules
        ranking = Ranking(data.query_ids, data.corpus_ids, *top, rules.ignore_identical_ids, rules.skip_first_result)
        extra = {"ranking": ranking, **scoring.muvera_report(rules, data, queries, documents)}
        return metrics, per_query, extra, vectors

    def perf_texts(self, data: RetrievalData, workload: str) -> tuple[EmbedKind, list[str]]:
        if workload == "corpus":
            return EmbedKind.document, list(data.corpus_texts)
        return EmbedKind.query, list(data.query_texts)


class _LocalFileTaskType(TaskType):
    """Classification, pair classification and STS from the local layouts of ../shared/data."""

    def load(self, split: str | None, data_root: Path | None) -> Any:
        root = data_root or paths.data_dir()
        if root is None:
            raise InputError(
                f"{self.spec.task_id}: the native {self.name} path reads local files; set {paths.DATA_DIR_ENV} to a "
                f"folder holding {self.spec.local_dir}/, or use --backend mteb to load it with MTEB from the hub"
            )
        return self.read(self.spec, split or self.spec.default_split, Path(root))

    @staticmethod
    @abstractmethod
    def read(spec: TaskSpec, split: str, data_root: Path) -> Any:
        """The local file layout's loader (lib/tasks/labeled.py)."""


class ClassificationTaskType(_LocalFileTaskType):
    name = "classification"
    rules_model = ClassificationRules
    data_type = ClassificationData
    table_metrics = ("accuracy", "f1", "f1_weighted", "precision", "recall", "precision_weighted", "recall_weighted")
    read = staticmethod(labeled.load_banking77_layout)

    def inputs(self, data: ClassificationData) -> dict[EmbedKind, list[str]]:
        """Only the training texts some experiment samples, then the test texts, each once."""
        union = sorted({i for exp in scoring.undersample_indices(data.train_labels, self.rules) for i in exp})
        texts = [data.train_texts[i] for i in union] + data.test_texts
        return {EmbedKind.query: list(dict.fromkeys(texts))}

    def score(self, data: ClassificationData, vectors: dict[EmbedKind, Any], similarity: str = "cosine") -> Scores:
        return scoring.score_classification(data, self._dense_lookup(data, vectors, similarity), self.rules)


class _PairTaskType(_LocalFileTaskType):
    def inputs(self, data: PairData) -> dict[EmbedKind, list[str]]:
        return data.embedding_inputs()

    def _pairs(self, data: PairData, vectors: dict[EmbedKind, Any], similarity: str) -> tuple[np.ndarray, np.ndarray]:
        lookup = self._dense_lookup(data, vectors, similarity)
        return np.stack([lookup[t] for t in data.sentence1]), np.stack([lookup[t] for t in data.sentence2])


class PairClassificationTaskType(_PairTaskType):
    name = "pair_classification"
    rules_model = PairClassificationRules
    data_type = PairData
    table_metrics = (
        "max_ap",
        "cosine_ap",
        "cosine_accuracy",
        "cosine_f1",
        "cosine_precision",
        "cosine_recall",
        "dot_ap",
        "euclidean_ap",
        "manhattan_ap",
        "max_f1",
        "max_accuracy",
    )
    read = staticmethod(labeled.load_twitter_layout)

    def score(self, data: PairData, vectors: dict[EmbedKind, Any], similarity: str = "cosine") -> Scores:
        return scoring.score_pair_classification(data, *self._pairs(data, vectors, similarity))


class STSTaskType(_PairTaskType):
    name = "sts"
    rules_model = STSRules
    data_type = PairData
    table_metrics = (
        "cosine_spearman",
        "cosine_pearson",
        "euclidean_spearman",
        "euclidean_pearson",
        "manhattan_spearman",
        "manhattan_pearson",
    )
    read = staticmethod(labeled.load_sts_layout)

    def score(self, data: PairData, vectors: dict[EmbedKind, Any], similarity: str = "cosine") -> Scores:
        return scoring.score_sts(data, *self._pairs(data, vectors, similarity), self.rules)


class FinesseTaskType(TaskType):
    """A Finesse long-context benchmark: probes, not a dataset split; run by the `finesse` CLI and the Dagster
    finesse assets (sie_evals/finesse), never by `sie-bench eval`."""

    name = "finesse"
    rules_model = FinesseRules
    data_type = TaskDataBase

    def load(self, split: str | None, data_root: Path | None) -> Any:
        raise InputError(
            f"task {self.spec.task_id} is a Finesse long-context benchmark: run it with the `finesse` CLI "
            "(finesse generate / finesse score) or the Dagster finesse assets"
        )

    def inputs(self, data: Any) -> dict[EmbedKind, list[str]]:
        raise InputError(f"task {self.spec.task_id}: Finesse tasks are run by the `finesse` CLI")

    def score(self, data: Any, vectors: dict[EmbedKind, Any], similarity: str = "cosine") -> Scores:
        raise InputError(f"task {self.spec.task_id}: Finesse tasks are scored by `finesse score`")


class MtebTaskType(TaskType):
    """Any text task of the installed mteb, through MTEB's task code and evaluators; this project's engine (through
    the embedding cache) is the encoder. MTEB's evaluator decides what to embed while it scores."""

    name = "mteb"
    rules_model = MtebRules
    data_type = MtebTaskData

    def load(self, split: str | None, data_root: Path | None, limit: int | None = None, corpus_size: int | None = None):
        """MTEB data is sliced inside the task instance (mteb_local.slice_task), so the slice is taken here."""
        from sie_evals.lib.tasks.mteb_tasks import get_mteb_task, load_mteb_task_data

        task = get_mteb_task(self.spec.mteb_name, self.spec.hf_subset)
        native_dir = self.spec.local_dir if not self.spec.type.startswith("mteb:") else None
        root = data_root or paths.data_dir()
        return load_mteb_task_data(
            self.spec.task_id, task, self.spec.hf_subset, split, root, native_dir, limit, corpus_size
        )

    def take_subset(self, data: Any, limit: int, corpus_size: int | None) -> Any:
        raise NotImplementedError("MTEB data is sliced as it loads: load(split, root, limit, corpus_size)")

    def inputs(self, data: Any) -> dict[EmbedKind, list[str]]:
        raise NotImplementedError("MTEB's evaluator decides what to embed: use evaluate()")

    def check_profile(self, profile: ResolvedProfile) -> None:
        if profile_similarity(profile) != "cosine":
            raise InputError(
                f"{self.spec.task_id}: MTEB's evaluators take dense vectors; profile {profile.name!r} "
                f"({profile.output.value}) runs on the native retrieval path only (--backend native)"
            )

    def embed(self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats) -> dict[EmbedKind, Any]:
        """Runs MTEB's evaluation once so every text it embeds is in the cache; scoring then reads the cache."""
        self.evaluate(data, engine, cache, stats)
        return {}

    def score(self, data: Any, vectors: dict[EmbedKind, Any], similarity: str = "cosine") -> Scores:
        raise NotImplementedError("MTEB's evaluator embeds while it scores: use evaluate()")

    def evaluate(self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats):
        from sie_evals.lib.quality.mteb_backend import score_with_mteb

        self.check_profile(engine.profile)
        metrics, per_item, extra = score_with_mteb(data, engine, cache, stats)
        return metrics, per_item, extra, None

    def perf_texts(self, data: Any, workload: str) -> tuple[EmbedKind, list[str]]:
        raise InputError(f"{self.spec.task_id}: perf runs take a native task's texts (--backend native)")


# `TaskSpec.type` -> its class: one line per type.
TASK_TYPES: dict[str, type[TaskType]] = {
    RetrievalTaskType.name: RetrievalTaskType,
    ClassificationTaskType.name: ClassificationTaskType,
    PairClassificationTaskType.name: PairClassificationTaskType,
    STSTaskType.name: STSTaskType,
    FinesseTaskType.name: FinesseTaskType,
}


def register_task_type(cls: type[TaskType]) -> type[TaskType]:
    """Adds a task type and the tasks it brings (`cls.tasks`); usable as a class decorator."""
    if cls.name in TASK_TYPES and TASK_TYPES[cls.name] is not cls:
        raise ValueError(f"task type {cls.name!r} is already registered ({TASK_TYPES[cls.name].__qualname__})")
    for spec in cls.tasks:
        if spec.type != cls.name or not isinstance(spec.rules, cls.rules_model):
            raise ValueError(
                f"task {spec.task_id}: type {spec.type!r} with {type(spec.rules).__name__} is not a {cls.name}"
            )
    TASK_TYPES[cls.name] = cls
    snapshot.register_data_type(cls.data_type)
    for spec in cls.tasks:
        register_task(spec)
    return cls


def unregister_task_type(cls: type[TaskType]) -> None:
    for spec in cls.tasks:
        unregister_task(spec.task_id)
    if TASK_TYPES.get(cls.name) is cls:
        del TASK_TYPES[cls.name]


def task_type_for(spec: TaskSpec) -> TaskType:
    if spec.backend == "mteb":
        return MtebTaskType(spec)
    if spec.type not in TASK_TYPES:
        raise InputError(f"task {spec.task_id} of type {spec.type} has no native implementation; use --backend mteb")
    return TASK_TYPES[spec.type](spec)


def table_metrics(task_type: str) -> tuple[str, ...] | None:
    """The headline metrics of a task type's reports (None for MTEB-backed and unknown types)."""
    cls = TASK_TYPES.get(task_type)
    return cls.table_metrics if cls is not None else None


def task_inputs(spec: TaskSpec, data: Any) -> dict[EmbedKind, list[str]]:
    """The texts a task embeds, per kind (symmetric tasks use the query side for every text)."""
    return task_type_for(spec).inputs(data)


def score_task(spec: TaskSpec, data: Any, vectors: dict[EmbedKind, Any], similarity: str = "cosine") -> Scores:
    """`similarity`: engines.vectors.similarity(profile); cosine unless the profile is sparse, multivector or MUVERA."""
    return task_type_for(spec).score(data, vectors, similarity)
