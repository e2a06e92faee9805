"""Targets and measurement history, saved into the hand-written model config.

Writes keep comments, key order and formatting (ruamel round-trip), validate the whole new config
against the schema before anything is replaced, go through a temp file + rename, and hold an
exclusive lock (a `.<config>.lock` file beside it) from read to rename, so concurrent writers never
lose each other's updates. Measurements are only ever appended. Per-query scores go to Parquet
files under `per_query/` beside the configs, referenced from the entry."""

import fcntl
import io
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from sie_evals.lib.config.model_config import ModelConfig, SavedResult, parse_model_config
from sie_evals.lib.core.atomic import atomic_write, atomic_write_text
from sie_evals.lib.core.errors import ConfigError
from sie_evals.lib.core.run_conditions import now_iso
from sie_evals.lib.gates.keys import path_slug

PER_QUERY_DIR = "per_query"


def _round_trip_yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 4096  # never wrap: one line per metrics map
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


@contextmanager
def config_lock(path: Path) -> Iterator[None]:
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def update_config(path: Path, mutate: Callable[[CommentedMap], None]) -> ModelConfig:
    """Apply `mutate` to the config's round-trip tree; validate; atomically replace. Under a lock."""
    path = Path(path)
    with config_lock(path):
        yaml = _round_trip_yaml()
        try:
            tree = yaml.load(path.read_text(encoding="utf-8"))
        except YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML, nothing written: {err}") from None
        if not isinstance(tree, CommentedMap):
            raise ConfigError(f"{path}: a model config must be a YAML mapping, nothing written")
        mutate(tree)
        buf = io.StringIO()
        yaml.dump(tree, buf)
        new_text = buf.getvalue()
        try:
            config = parse_model_config(YAML(typ="safe", pure=True).load(new_text), path)
        except ConfigError as err:
            raise ConfigError(f"{err}\n(the update was not written)") from None
        atomic_write_text(path, new_text)
        return config


def _child(tree: CommentedMap, key: str) -> CommentedMap:
    node = tree.get(key)
    if node is None:
        node = CommentedMap()
        tree[key] = node
    return node


def _flow(d: dict[str, Any]) -> CommentedMap:
    m = CommentedMap(d)
    m.fa.set_flow_style()  # one line per metrics map keeps long histories readable
    return m


def _entry(
    source: str,
    metrics: dict[str, float],
    conditions: dict[str, Any],
    per_query: str | None,
    measurement_id: str | None = None,
) -> CommentedMap:
    e = CommentedMap()
    if measurement_id:
        e["id"] = measurement_id
    e["source"] = source
    e["saved"] = now_iso()
    e["metrics"] = _flow({k: float(v) for k, v in metrics.items()})
    e["conditions"] = CommentedMap(conditions)
    if per_query:
        e["per_query"] = per_query
    return e


def _write_per_query(config_path: Path, rel: str, per_query: pd.DataFrame) -> None:
    atomic_write(config_path.parent / rel, lambda tmp: per_query.to_parquet(tmp, index=False))


def save_target(
    config: ModelConfig,
    task: str,
    profile: str,
    variant: str,
    source: str,
    metrics: dict[str, float],
    conditions: dict[str, Any],
    per_query: pd.DataFrame | None = None,
) -> ModelConfig:
    """Replace the target of (task, profile, variant) with this source's result."""
    path = _require_path(config)
    rel = None
    if per_query is not None:
        rel = f"{PER_QUERY_DIR}/{config.short_name}/targets/{path_slug(task)}__{profile}__{path_slug(variant)}.parquet"
        _write_per_query(path, rel, per_query)

    def mutate(tree: CommentedMap) -> None:
        _child(_child(_child(tree, "targets"), task), profile)[variant] = _entry(source, metrics, conditions, rel)

    return update_config(path, mutate)


def append_measurement(
    config: ModelConfig,
    task: str,
    profile: str,
    variant: str,
    source: str,
    metrics: dict[str, float],
    conditions: dict[str, Any],
    per_query: pd.DataFrame | None = None,
) -> tuple[ModelConfig, str]:
    """Append one entry to the measurement history; never rewrites or drops an existing one."""
    path = _require_path(config)
    measurement_id = f"{now_iso().replace(':', '').replace('+0000', 'Z')}-{source}-{secrets.token_hex(3)}"
    rel = None
    if per_query is not None:
        rel = f"{PER_QUERY_DIR}/{config.short_name}/measurements/{measurement_id}.parquet"
        _write_per_query(path, rel, per_query)

    def mutate(tree: CommentedMap) -> None:
        per_profile = _child(_child(_child(tree, "measurements"), task), profile)
        history = per_profile.get(variant)
        if history is None:
            history = per_profile[variant] = CommentedSeq()
        history.append(_entry(source, metrics, conditions, rel, measurement_id))

    return update_config(path, mutate), measurement_id


def load_per_query(config: ModelConfig, entry: SavedResult) -> pd.DataFrame | None:
    if not entry.per_query or config.path is None:
        return None
    file = config.path.parent / entry.per_query
    if not file.is_file():
        return None
    return pd.read_parquet(file)


def _require_path(config: ModelConfig) -> Path:
    if config.path is None:
        raise ConfigError(f"model {config.model_id} was not loaded from a file; cannot save into it")
    return config.path
