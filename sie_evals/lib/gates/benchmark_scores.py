"""The `benchmark` source: published MTEB scores shipped with the project (sie_evals/data/
published_scores.yaml), each with its provenance."""

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from ruamel.yaml import YAML

from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.gates.thresholds import metric_kind

PUBLISHED_SCORES_FILE = Path(__file__).resolve().parents[2] / "data" / "published_scores.yaml"


class PublishedScore(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    task: str
    split: str
    path: str
    last_commit: str
    mteb_version: str
    dataset_revision: str
    model_revision: str
    metrics: dict[str, float]

    @field_validator("metrics")
    @classmethod
    def _known(cls, metrics: dict[str, float]) -> dict[str, float]:
        unknown = [m for m in metrics if metric_kind(m) is None]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}")
        return metrics


class PublishedScores(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    results_repository: str
    results_commit: str
    scores: list[PublishedScore]


@lru_cache(maxsize=4)
def load_published_scores(path: Path = PUBLISHED_SCORES_FILE) -> PublishedScores:
    try:
        data = YAML(typ="safe", pure=True).load(Path(path).read_text())
        return PublishedScores.model_validate(data)
    except (OSError, ValidationError, Exception) as err:
        raise ConfigError(f"{path}: invalid published scores file: {err}") from None


def published_score(model_id: str, task_id: str, split: str) -> tuple[dict[str, float], dict[str, Any]] | None:
    """(metrics, provenance) for a model/task/split, or None when nothing is published here."""
    book = load_published_scores()
    for s in book.scores:
        if s.model == model_id and s.task.lower() == task_id.lower() and s.split == split:
            provenance = {
                "repository": book.results_repository,
                "commit": book.results_commit,
                **s.model_dump(exclude={"metrics", "model", "task", "split"}),
            }
            return dict(s.metrics), provenance
    return None
