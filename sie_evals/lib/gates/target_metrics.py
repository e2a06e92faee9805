"""Which metrics a task produces, so a saved target or measurement can only name one a run can check.

A target for `ndcg_at_11` (a typo) or for `accuracy` on a retrieval task is never compared with
anything: the check passes silently forever. `sie-bench validate` therefore checks every entry of a
model config (every task, profile, variant and data slice, not only the one a run reads) against this
vocabulary. Names are the scorers' own (lib/quality/scoring.py, metrics.py; finesse/results.py);
sie_evals_tests/test_target_metrics.py runs the real scorers to hold the two together.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.core.metric_names import (
    CLASSIFICATION_EXPERIMENT_SHAPE,
    CLASSIFICATION_METRICS,
    FINESSE_METRICS,
    PAIR_CLASSIFICATION_METRICS,
    RETRIEVAL_SHAPE,
    STS_METRICS,
    MetricKind,
    is_perf_metric,
    metric_kind,
    retrieval_metrics,
)
from sie_evals.lib.gates.keys import PERF_PREFIX
from sie_evals.lib.tasks.registry import TaskSpec, registered_tasks


@dataclass(frozen=True)
class Vocabulary:
    """What one kind of entry can hold: a list of names, names of one shape, or any name of some kinds."""

    what: str  # e.g. "beir/SciFact (retrieval)"
    names: tuple[str, ...] = ()
    shape: str | None = None  # a regular expression, when the names are only known at run time
    kinds: tuple[MetricKind, ...] = ()
    perf: bool = False  # any metric a perf run reports

    def allows(self, metric: str) -> bool:
        if self.perf:
            return is_perf_metric(metric)
        if self.names or self.shape:
            return metric in self.names or (self.shape is not None and re.fullmatch(self.shape, metric) is not None)
        return metric_kind(metric) in self.kinds

    def listing(self) -> str:
        if self.names or self.shape:
            shape = f"names matching {self.shape}" if self.shape else ""
            return ", ".join(n for n in (", ".join(self.names), shape) if n)
        return f"any {' or '.join(k.value for k in self.kinds)} metric"


def _spec(task: str) -> TaskSpec | None:
    """A registered task's spec by id or alias; None for tasks resolved at run time (beir/<folder>,
    mteb/<any>): resolving those would import mteb, far too slow for validating a config."""
    for spec in registered_tasks():
        if task.lower() in (n.lower() for n in (spec.task_id, *spec.aliases)):
            return spec
    return None


def _retrieval(what: str, k_values: tuple[int, ...]) -> Vocabulary:
    return Vocabulary(what, retrieval_metrics(k_values))


def vocabulary(task: str, variant: str) -> Vocabulary:
    """The metrics a result saved under targets[task][*][variant] can hold."""
    if variant.startswith(PERF_PREFIX):
        return Vocabulary(f"{task} perf", kinds=(MetricKind.latency, MetricKind.throughput), perf=True)
    spec = _spec(task)
    if spec is None:
        if task.lower().startswith("beir/"):  # its k values come from mteb's task at run time
            return Vocabulary(f"{task} (retrieval)", shape=RETRIEVAL_SHAPE)
        return Vocabulary(f"{task} (MTEB task)", kinds=(MetricKind.quality,))
    what = f"{task} ({spec.type})"
    if spec.type == "retrieval":
        return _retrieval(what, spec.rules.k_values)
    if spec.type == "classification":
        return Vocabulary(what, CLASSIFICATION_METRICS, shape=CLASSIFICATION_EXPERIMENT_SHAPE)
    if spec.type == "pair_classification":
        return Vocabulary(what, PAIR_CLASSIFICATION_METRICS)
    if spec.type == "sts":
        return Vocabulary(what, STS_METRICS)
    if spec.type == "finesse":
        return Vocabulary(what, FINESSE_METRICS[spec.rules.main_score])
    return Vocabulary(what, kinds=(MetricKind.quality,))


def _entries(config: ModelConfig) -> Iterator[tuple[str, str, str, str, dict[str, float]]]:
    for task, profiles in config.targets.items():
        for profile, variants in profiles.items():
            for variant, entry in variants.items():
                yield f"targets[{task}][{profile}][{variant}]", task, variant, "metrics", entry.metrics
    for task, profiles in config.measurements.items():
        for profile, variants in profiles.items():
            for variant, history in variants.items():
                for i, m in enumerate(history):
                    yield f"measurements[{task}][{profile}][{variant}][{i}]", task, variant, "metrics", m.metrics


def unproducible_metrics(config: ModelConfig) -> list[str]:
    """One line per saved metric that its task never produces: field path, metric, valid names."""
    problems = []
    for where, task, variant, field, metrics in _entries(config):
        vocab = vocabulary(task, variant)
        for metric in metrics:
            if not vocab.allows(metric):
                problems.append(
                    f"  field '{where}.{field}.{metric}': {vocab.what} never produces {metric!r}, so it can "
                    f"never be checked; valid metrics: {vocab.listing()}"
                )
    return problems


def check_saved_metrics(config: ModelConfig) -> None:
    """ConfigError (exit 2) naming the file and every entry with a metric its task never produces."""
    problems = unproducible_metrics(config)
    if problems:
        head = f"{config.path}: {len(problems)} saved metric(s) that no run produces"
        raise ConfigError("\n".join([head, *problems]))
