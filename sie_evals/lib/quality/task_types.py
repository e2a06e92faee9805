"""Task types as classes behind one interface: load -> embed -> score -> main score (as MTEB's AbsTask family).

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

from sie_evals.lib.core import paths
from sie_evals.lib.core.errors import InputError
from sie_evals.lib.engines import outputs
from sie_evals.lib.engines.base import EmbedKind, Engine
from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache
from sie_evals.lib.quality import scoring
from sie_evals.lib.tasks.labeled import LOCAL_LOADERS
from sie_evals.lib.tasks.registry import TaskSpec
from sie_evals.lib.tasks.retrieval import load_retrieval_data

Scores = tuple[dict[str, float], pd.DataFrame]


class TaskType(ABC):
    """One task type: how its data is loaded, what is embedded, how it is scored and which score is main."""

    name: ClassVar[str]

    def __init__(self, spec: TaskSpec):
        self.spec = spec

    @property
    def main_score(self) -> str:
        return self.spec.rules.main_score

    @abstractmethod
    def load(self, split: str | None, data_root: Path | None) -> Any:
        """The task's data for one split (unsliced)."""

    def inputs(self, data: Any) -> dict[EmbedKind, list[str]]:
        """The texts to embed before scoring, per kind."""
        return scoring.task_inputs(self.spec, data)

    def embed(self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats) -> dict[EmbedKind, np.ndarray]:
        outputs.check_task_type(self.spec.task_id, self.spec.type, engine.profile)
        return {
            # MUVERA profiles: the cache holds the token vectors, the FDE is computed from them (outputs.py)
            kind: outputs.postprocess(engine.profile, kind == EmbedKind.query, cache.embed(engine, texts, kind, stats))
            for kind, texts in self.inputs(data).items()
        }

    def score(self, data: Any, vectors: dict[EmbedKind, np.ndarray], similarity: str = "cosine") -> Scores:
        """`similarity`: outputs.similarity(profile): cosine unless the profile is sparse, multivector or MUVERA."""
        return scoring.score_task(self.spec, data, vectors, similarity)

    def evaluate(
        self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats
    ) -> tuple[dict[str, float], pd.DataFrame, dict[str, Any], dict[EmbedKind, np.ndarray] | None]:
        """embed -> score in one go; returns metrics, per-item scores, extra report fields and the vectors."""
        vectors = self.embed(data, engine, cache, stats)
        metrics, per_item = self.score(data, vectors, outputs.similarity(engine.profile))
        return metrics, per_item, {}, vectors


class RetrievalTaskType(TaskType):
    name = "retrieval"

    def load(self, split: str | None, data_root: Path | None) -> Any:
        return load_retrieval_data(self.spec, split or self.spec.default_split, data_root)

    def evaluate(self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats):
        """Also keeps the ranking the metrics came from, as extra["ranking"] (the harness takes it out of
        the report: --save-run and saved results write it)."""
        from sie_evals.lib.quality.ranking import Ranking

        vectors = self.embed(data, engine, cache, stats)
        similarity = outputs.similarity(engine.profile)
        queries, documents = vectors[EmbedKind.query], vectors[EmbedKind.document]
        top = scoring.retrieval_top_k(self.spec, queries, documents, similarity)
        metrics, per_query = scoring.score_retrieval(self.spec, data, queries, documents, similarity, top)
        rules = self.spec.rules
        ranking = Ranking(data.query_ids, data.corpus_ids, *top, rules.ignore_identical_ids, rules.skip_first_result)
        extra = {"ranking": ranking, **scoring.muvera_report(self.spec, data, queries, documents)}
        return metrics, per_query, extra, vectors


class _LocalFileTaskType(TaskType):
    """Classification, pair classification and STS from the local layouts of ../shared/data."""

    def load(self, split: str | None, data_root: Path | None) -> Any:
        root = data_root or paths.data_dir()
        if root is None:
            raise InputError(
                f"{self.spec.task_id}: the native {self.name} path reads local files; set {paths.DATA_DIR_ENV} to a "
                f"folder holding {self.spec.local_dir}/, or use --backend mteb to load it with MTEB from the hub"
            )
        return LOCAL_LOADERS[self.name](self.spec, split or self.spec.default_split, Path(root))


class ClassificationTaskType(_LocalFileTaskType):
    name = "classification"


class PairClassificationTaskType(_LocalFileTaskType):
    name = "pair_classification"


class STSTaskType(_LocalFileTaskType):
    name = "sts"


class MtebTaskType(TaskType):
    """Any text task of the installed mteb, through MTEB's task code and evaluators; this project's engine (through
    the embedding cache) is the encoder."""

    name = "mteb"

    def load(self, split: str | None, data_root: Path | None, limit: int | None = None, corpus_size: int | None = None):
        from sie_evals.lib.tasks.mteb_tasks import get_mteb_task, load_mteb_task_data

        task = get_mteb_task(self.spec.mteb_name, self.spec.hf_subset)
        native_dir = self.spec.local_dir if not self.spec.type.startswith("mteb:") else None
        return load_mteb_task_data(
            self.spec.task_id,
            task,
            self.spec.hf_subset,
            split,
            data_root or paths.data_dir(),
            native_dir,
            limit,
            corpus_size,
        )

    def inputs(self, data: Any) -> dict[EmbedKind, list[str]]:
        raise NotImplementedError("MTEB's evaluator decides what to embed: use evaluate()")

    def embed(self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats) -> dict[EmbedKind, np.ndarray]:
        """Runs MTEB's evaluation once so every text it embeds is in the cache; scoring then reads the cache."""
        self.evaluate(data, engine, cache, stats)
        return {}

    def score(self, data: Any, vectors: dict[EmbedKind, np.ndarray], similarity: str = "cosine") -> Scores:
        raise NotImplementedError("MTEB's evaluator embeds while it scores: use evaluate()")

    def evaluate(self, data: Any, engine: Engine, cache: EmbeddingCache, stats: CacheStats):
        from sie_evals.lib.quality.mteb_backend import score_with_mteb

        if outputs.similarity(engine.profile) != "cosine":
            raise InputError(
                f"{self.spec.task_id}: MTEB's evaluators take dense vectors; profile {engine.profile.name!r} "
                f"({engine.profile.output.value}) runs on the native retrieval path only (--backend native)"
            )

        metrics, per_item, extra = score_with_mteb(data, engine, cache, stats)
        return metrics, per_item, extra, None


NATIVE_TYPES: dict[str, type[TaskType]] = {
    cls.name: cls for cls in (RetrievalTaskType, ClassificationTaskType, PairClassificationTaskType, STSTaskType)
}


def task_type_for(spec: TaskSpec) -> TaskType:
    if spec.backend == "mteb":
        return MtebTaskType(spec)
    if spec.type not in NATIVE_TYPES:
        raise InputError(f"task {spec.task_id} of type {spec.type} has no native implementation; use --backend mteb")
    return NATIVE_TYPES[spec.type](spec)
