"""The MTEB backend: MTEB's own task code and evaluators, with this project's engines as the encoder.

`CachedEngineEncoder` implements mteb's EncoderProtocol (encode(DataLoader[BatchedInput], task_metadata,
hf_split, hf_subset, prompt_type), similarity, similarity_pairwise, mteb_model_meta) on top of any Engine
(local, sie, infinity, tei, ...) through the embedding cache. A text is embedded as a query when MTEB asks for
the query side or for no side (symmetric tasks: classification, clustering, STS, pair classification, as the
native path does) and as a document for MTEB's document side; the cache key carries that kind, and MTEB's
instruction (already part of an instruction-retrieval query's text) is part of the exact text hashed.
"""

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from sie_evals.lib.engines.base import EmbedKind, Engine
from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache
from sie_evals.lib.tasks.mteb_tasks import MtebTaskData, task_metadata

log = logging.getLogger(__name__)


def _model_meta(engine: Engine) -> Any:
    from mteb.models.model_meta import ModelMeta

    info = engine.info()
    return ModelMeta.create_empty(
        overwrites={
            "name": info.model_id,
            "revision": info.model_revision or "no_revision_available",
            "similarity_fn_name": "cosine",
            "framework": ["Sentence Transformers"],
            "modalities": ["text"],
        }
    )


class CachedEngineEncoder:
    """mteb EncoderProtocol over an Engine and the embedding cache."""

    def __init__(self, engine: Engine, cache: EmbeddingCache, stats: CacheStats | None = None):
        self.engine = engine
        self.cache = cache
        self.stats = stats if stats is not None else CacheStats()
        self._meta = _model_meta(engine)
        self.encode_calls: list[dict[str, Any]] = []

    @property
    def mteb_model_meta(self) -> Any:
        return self._meta

    def encode(
        self,
        inputs: Any,
        *,
        task_metadata: Any,
        hf_split: str,
        hf_subset: str,
        prompt_type: Any = None,
        **kwargs: Any,
    ) -> np.ndarray:
        from mteb.types import PromptType

        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(f"{task_metadata.name}: only text inputs can be embedded (batch has {list(batch)})")
            texts.extend(batch["text"])
        kind = EmbedKind.document if prompt_type == PromptType.document else EmbedKind.query
        self.encode_calls.append({"texts": len(texts), "kind": kind.value})
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        # in memory: MTEB's evaluators own what encode() returns (and search in 50k-document chunks anyway)
        return self.cache.embed(self.engine, texts, kind, self.stats, memmap=False)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def _flatten(scores: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """MTEB's scores dict as flat numeric metrics (nested dicts joined with '.'); per-item lists are kept apart."""
    out: dict[str, float] = {}
    for key, value in scores.items():
        if key in ("hf_subset", "languages"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
    return out


def _numeric_lists(scores: dict[str, Any], prefix: str = "") -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for key, value in scores.items():
        if isinstance(value, list) and value and all(isinstance(x, int | float) for x in value):
            out[f"{prefix}{key}"] = [float(x) for x in value]
        elif isinstance(value, dict):
            out.update(_numeric_lists(value, f"{prefix}{key}."))
    return out


def _per_item(scores: dict[str, Any]) -> pd.DataFrame:
    """Per-item scores where MTEB returns them (per clustering run, per experiment...): one row per item."""
    columns = _numeric_lists(scores)
    if not columns:
        return pd.DataFrame({"query_id": []})
    n = max(len(v) for v in columns.values())
    frame = pd.DataFrame({k: list(v) + [None] * (n - len(v)) for k, v in columns.items()})
    frame.insert(0, "query_id", [str(i) for i in range(n)])
    return frame


def score_with_mteb(
    data: MtebTaskData, engine: Engine, cache: EmbeddingCache, stats: CacheStats
) -> tuple[dict[str, float], pd.DataFrame, dict[str, Any]]:
    """Run MTEB's evaluator for the task's split and subset with the engine as encoder. Returns every metric MTEB
    returns (flattened), per-item scores where MTEB gives them, and the task metadata."""
    import mteb

    encoder = CachedEngineEncoder(engine, cache, stats)
    start = time.perf_counter()
    result = mteb.evaluate(
        encoder,
        data.task,
        cache=None,
        overwrite_strategy="always",
        show_progress_bar=False,
        co2_tracker=False,
    )
    seconds = time.perf_counter() - start
    task_result = result.task_results[0]
    per_split = task_result.scores.get(data.split) or []
    scores = next((s for s in per_split if s.get("hf_subset") == data.hf_subset), None)
    if scores is None:
        raise RuntimeError(f"mteb returned no scores for {data.task_id} split {data.split} subset {data.hf_subset}")
    metrics = _flatten(scores)
    return (
        metrics,
        _per_item(scores),
        {
            "mteb": task_metadata(data.task, data.hf_subset),
            "mteb_seconds": round(seconds, 3),
            "encode_calls": encoder.encode_calls,
        },
    )
