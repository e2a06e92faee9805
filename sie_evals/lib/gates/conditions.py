"""Run conditions as saved with a result, and what changed between two results: the answer to "why
did this check fail?" (`ndcg_at_10 0.6451 -> 0.6102 (-5.4%); changed since last pass: transformers
5.23.0 -> 5.24.0`). Pure: the CLI verdict, the Dagster checks and the alerts all call it."""

from dataclasses import asdict, dataclass
from typing import Any

from sie_evals.lib.core.metric_names import MetricKind, metric_kind

# (label, dotted path into the saved conditions), in the order a reader should see them
DIFF_FIELDS: tuple[tuple[str, str], ...] = (
    ("torch", "software.torch"),
    ("transformers", "software.transformers"),
    ("tokenizers", "software.tokenizers"),
    ("engine", "engine"),
    ("engine version", "engine_version"),
    ("runtime", "runtime"),
    ("model revision", "model_revision"),
    ("weights", "weights"),
    ("weights hash", "weights_hash"),
    ("profile", "profile"),
    ("dtype", "dtype"),
    ("pooling", "profile_settings.pooling"),
    ("normalize", "profile_settings.normalize"),
    ("max_seq_length", "profile_settings.max_seq_length"),
    ("query_prefix", "profile_settings.query_prefix"),
    ("document_prefix", "profile_settings.document_prefix"),
    ("cpu", "hardware.cpu"),
    ("cpu count", "hardware.cpu_count"),
    ("gpus", "hardware.gpus"),
    ("dataset hash", "dataset_hash"),
    ("sie-evals", "harness_version"),
)
# perf numbers also move with the load and the batch size
PERF_DIFF_FIELDS: tuple[tuple[str, str], ...] = (("batch size", "batch_size"), ("concurrency", "concurrency"))

_PROFILE_FIELDS = ("pooling", "normalize", "max_seq_length", "query_prefix", "document_prefix", "dtype")


def summarize(rc: dict[str, Any], profile_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run conditions saved with a target or measurement (a full report's are larger)."""
    hw = rc.get("hardware") or {}
    sw = rc.get("software") or {}
    dataset = rc.get("dataset") or {}
    return {
        "engine": rc.get("engine"),
        "engine_version": rc.get("engine_version"),
        "runtime": rc.get("runtime"),  # local engine; with runtime auto, what it chose and why:
        # not where this machine cached the choice: a local path means nothing in a shared config
        "runtime_choice": {k: v for k, v in rc["runtime_choice"].items() if k != "file"}
        if rc.get("runtime_choice")
        else None,
        "model_revision": rc.get("model_revision"),
        "weights": rc.get("weights"),
        "weights_hash": rc.get("weights_hash"),
        "profile": rc.get("profile"),
        "profile_settings": {k: v for k, v in (profile_settings or {}).items() if k in _PROFILE_FIELDS} or None,
        "dtype": rc.get("dtype"),
        "batch_size": rc.get("batch_size"),
        "concurrency": rc.get("concurrency"),
        "threads": rc.get("threads"),
        "workload": rc.get("workload"),
        "hardware": {k: hw.get(k) for k in ("cpu", "cpu_count", "gpus", "host")},
        "load_avg": rc.get("load_avg_before", hw.get("load_avg_1m")),
        # perf: the load generator's own latency on this machine (lib/perf/overhead.py)
        "generator_overhead": rc.get("generator_overhead"),
        "trial_values": rc.get("trial_values"),  # perf: each trial's p50/p99/throughput (lib/perf/trials.py)
        "software": {k: sw.get(k) for k in ("python", "torch", "transformers", "tokenizers", "numpy") if k in sw},
        "harness_version": sw.get("sie_evals"),
        "dataset_hash": dataset.get("content_hash"),
        "split": dataset.get("split"),
        "subset": dataset.get("subset"),
        "date": rc.get("date"),
    }


def from_finesse_results(results: dict[str, Any]) -> dict[str, Any]:
    """The run conditions of a Finesse results file (benchmark_results.json), in the same shape, so
    a Finesse target or measurement diffs like any other."""
    meta = results.get("metadata") or {}
    models = meta.get("models") or {}
    engine = models.get("native") or models.get("base_embedder") or models.get("byok") or {}
    profile = engine.get("profile") if isinstance(engine.get("profile"), dict) else {}
    rc = {
        "engine": engine.get("engine"),
        "engine_version": engine.get("version"),
        "model_revision": engine.get("model_revision"),
        "weights": engine.get("weights") or engine.get("identity"),
        "weights_hash": engine.get("model_hash"),
        "profile": profile.get("name"),
        "dtype": profile.get("dtype"),
        "hardware": meta.get("device_info") or {},
        "software": meta.get("package_versions") or {},
        "dataset": {"content_hash": _probe_hash(results)},
        "date": meta.get("created"),
    }
    summary = summarize(rc, profile)
    summary["finesse"] = {
        k: results.get(k) for k in ("final_formula", "formula", "content_hash") if results.get(k) is not None
    }
    if "merger" in models:
        summary["finesse"]["merger"] = models["merger"]
    return summary


def _probe_hash(results: dict[str, Any]) -> str | None:
    """The probes are fixed by the config and the documents: their hash stands in for a dataset hash."""
    import hashlib
    import json

    meta = results.get("metadata") or {}
    basis = {"config": results.get("config"), "dataset": meta.get("dataset"), "documents": meta.get("documents")}
    if not any(basis.values()):
        return None
    return hashlib.sha256(json.dumps(basis, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Change:
    field: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.field} {_show(self.before)} -> {_show(self.after)}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]" if value else "none"
    if value == "":
        return "''"
    return str(value)


def _get(conditions: dict[str, Any], path: str) -> Any:
    node: Any = conditions
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def diff_conditions(before: dict[str, Any] | None, after: dict[str, Any] | None, perf: bool = False) -> list[Change]:
    """Fields recorded on both sides whose values differ (a field one side did not record is not a
    change: it is unknown)."""
    if not before or not after:
        return []
    fields = DIFF_FIELDS + (PERF_DIFF_FIELDS if perf else ())
    changes = []
    for label, path in fields:
        a, b = _get(before, path), _get(after, path)
        if a is _MISSING or b is _MISSING or a is None or b is None:
            continue
        if a != b:
            changes.append(Change(label, a, b))
    return changes


def metric_change(metric: str, value: float | None, reference: float | None) -> str:
    """`ndcg_at_10 0.6451 -> 0.6102 (-5.4%)`."""
    if value is None or reference is None:
        return f"{metric} {_num(reference)} -> {_num(value)}"
    pct = (value - reference) / reference * 100 if reference else float("inf")
    return f"{metric} {_num(reference)} -> {_num(value)} ({pct:+.1f}%)"


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if abs(x) < 10 else f"{x:.1f}"


def diagnosis(
    failed: list[dict[str, Any]], changes: list[Change] | None, baseline: str | None, comparable: bool = True
) -> str:
    """One line: what moved, and what changed in the run conditions since the last passing result."""
    moved = "; ".join(metric_change(v["metric"], v.get("value"), v.get("reference")) for v in failed)
    if not comparable:
        why = f"no run conditions recorded with the last pass ({baseline})" if baseline else "no last pass known"
    elif changes:
        why = "changed since last pass: " + ", ".join(str(c) for c in changes)
    else:
        why = "nothing recorded changed since last pass (same software, model, profile, hardware and data)"
    where = f" [last pass: {baseline}]" if baseline and comparable else ""
    return f"{moved}; {why}{where}" if moved else why


def comparable(conditions: dict[str, Any] | None) -> bool:
    """Whether saved conditions hold anything diff_conditions can compare."""
    return bool(conditions) and any(_get(conditions, path) not in (_MISSING, None) for _, path in DIFF_FIELDS)


def is_perf_metric(metric: str) -> bool:
    return metric_kind(metric) in (MetricKind.latency, MetricKind.throughput)
