"""The `benchmark` source: published MTEB scores shipped with the project (sie_evals/data/
published_scores.yaml), each with its provenance; for any other task, a local copy of MTEB's results
repository (`results/<org>__<model>/<revision>/<Task>.json`, `--results-repo DIR` or $SIE_EVALS_RESULTS_REPO).

A score published for another model revision than the one the model config pins is used, never
silently: its provenance carries a `warning` naming both revisions, which the CLI prints and the
report keeps (MTEB's results often exist only for an older revision of the same weights)."""

import json
import os
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


RESULTS_REPO_ENV = "SIE_EVALS_RESULTS_REPO"


def results_repo_score(
    repo: Path,
    model_id: str,
    model_revision: str | None,
    mteb_name: str,
    split: str,
    hf_subset: str | None = None,
) -> tuple[dict[str, float], dict[str, Any]] | None:
    """A model's published result for one MTEB task, split and subset from a local copy of MTEB's results
    repository; the model config's revision first, else the only (or newest-named) revision folder."""
    model_dir = Path(repo) / "results" / model_id.replace("/", "__")
    if not model_dir.is_dir():
        return None
    revisions = sorted(p for p in model_dir.iterdir() if (p / f"{mteb_name}.json").is_file())
    if not revisions:
        return None
    chosen = next((p for p in revisions if same_revision(p.name, model_revision)), revisions[-1])
    path = chosen / f"{mteb_name}.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        entries = result["scores"][split]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{path}: not an MTEB result file with split {split!r} ({type(err).__name__}: {err})"
        ) from None
    entry = next((e for e in entries if e.get("hf_subset") == (hf_subset or "default")), None)
    if entry is None:
        return None
    metrics = {k: float(v) for k, v in entry.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    provenance = {
        "repository": str(repo),
        "path": str(path.relative_to(repo)),
        "mteb_version": result.get("mteb_version"),
        "dataset_revision": result.get("dataset_revision"),
        "model_revision": chosen.name,
        "subset": hf_subset or "default",
    }
    return metrics, provenance


def same_revision(a: str | None, b: str | None) -> bool:
    """Equal, or one an abbreviation (7+ hex digits) of the other, as git shows commits."""
    if not a or not b:
        return False
    short, full = sorted((a.lower(), b.lower()), key=len)
    return short == full or (len(short) >= 7 and full.startswith(short))


def _revision_warning(provenance: dict[str, Any], model_revision: str | None) -> dict[str, Any]:
    published = provenance.get("model_revision")
    if not model_revision or same_revision(published, model_revision):
        return provenance
    return {
        **provenance,
        "warning": f"published score is for model revision {published or '(none recorded)'} "
        f"({provenance.get('path')}), not the model config's revision {model_revision}",
    }


def published_score(
    model_id: str,
    task_id: str,
    split: str,
    *,
    mteb_name: str | None = None,
    hf_subset: str | None = None,
    model_revision: str | None = None,
) -> tuple[dict[str, float], dict[str, Any]] | None:
    """(metrics, provenance) for a model/task/split, or None when nothing is published: the curated file first,
    then the results repository named by $SIE_EVALS_RESULTS_REPO."""
    found = _curated_score(model_id, task_id, split) if not hf_subset else None
    repo = os.environ.get(RESULTS_REPO_ENV)
    if found is None and repo and mteb_name:
        found = results_repo_score(Path(repo), model_id, model_revision, mteb_name, split, hf_subset)
    if found is None:
        return None
    metrics, provenance = found
    return metrics, _revision_warning(provenance, model_revision)


def _curated_score(model_id: str, task_id: str, split: str) -> tuple[dict[str, float], dict[str, Any]] | None:
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
