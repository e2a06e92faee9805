"""Targets and measurement history, saved into the hand-written model config.

Writes keep comments, key order and formatting (ruamel round-trip), validate the whole new config
against the schema before anything is replaced, go through a temp file + rename, and hold an
exclusive lock (a `.<config>.lock` file beside it) from read to rename, so concurrent writers never
lose each other's updates. Measurements are only ever appended. Per-query scores go to Parquet
files under `per_query/` beside the configs, referenced from the entry.

A writer killed mid-save (kill -9) can leave a temp file or a Parquet file no entry references; the
next writer, holding the lock, removes both. A writer waiting for the lock says which process holds
it and gives up after `SIE_EVALS_LOCK_TIMEOUT_S` seconds (default 120) with an error naming it."""

import fcntl
import io
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from sie_evals.lib.config.model_config import Measurement, ModelConfig, SavedResult, parse_model_config
from sie_evals.lib.core.atomic import atomic_write, atomic_write_text
from sie_evals.lib.core.errors import ConfigError, SieEvalsError
from sie_evals.lib.core.run_conditions import now_iso
from sie_evals.lib.gates.keys import ResultKey, perf_key_of_legacy

PER_QUERY_DIR = "per_query"
LOCK_TIMEOUT_ENV = "SIE_EVALS_LOCK_TIMEOUT_S"
DEFAULT_LOCK_TIMEOUT_S = 120.0
log = logging.getLogger(__name__)


class LockTimeoutError(SieEvalsError):
    """Another live process held the config lock for longer than the timeout."""


def _round_trip_yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, order and quoting survive
    yaml.preserve_quotes = True
    yaml.width = 4096  # never wrap: one line per metrics map
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info.get("pid"):
        return "another process (unknown pid)"
    return f"pid {info['pid']} on {info.get('host', '?')} since {info.get('since', '?')} ({info.get('command', '?')})"


@contextmanager
def config_lock(path: Path, timeout_s: float | None = None) -> Iterator[None]:
    """An exclusive lock on the config. The holder writes who it is into the lock file, so a waiter
    can say whom it waits for; flock is released by the kernel when a holder dies, even by kill -9."""
    if timeout_s is None:
        timeout_s = float(os.environ.get(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S))
    lock_path = path.with_name(f".{path.name}.lock")
    with open(lock_path, "a+") as fh:
        start = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if waited >= timeout_s:
                    raise LockTimeoutError(
                        f"{path}: gave up after {timeout_s:g} s waiting for the lock {lock_path.name}, held by "
                        f"{_holder(lock_path)}; nothing was written (stop that process, or raise {LOCK_TIMEOUT_ENV})"
                    ) from None
                if not announced and waited >= 1.0:
                    log.warning("%s: waiting for the lock held by %s", path, _holder(lock_path))
                    announced = True
                time.sleep(0.05)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "since": now_iso(),
                        "command": " ".join(sys.argv)[:200],
                    }
                )
            )
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(path: Path, config: ModelConfig) -> list[Path]:
    """Under the lock: temp files of an interrupted write of this config, and Parquet files under its
    per_query folder that no entry references (a writer killed between Parquet and config)."""
    removed = [p for p in path.parent.glob(f".{path.name}.*.tmp")]
    folder = path.parent / PER_QUERY_DIR / config.short_name
    if folder.is_dir():
        removed += [p for p in folder.rglob(".*.tmp")]
        referenced = {(path.parent / entry.per_query).resolve() for entry in _all_entries(config) if entry.per_query}
        removed += [p for p in folder.rglob("*.parquet") if p.resolve() not in referenced]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def _all_entries(config: ModelConfig) -> Iterator[SavedResult]:
    for profiles in config.targets.values():
        for variants in profiles.values():
            yield from variants.values()
    for profiles in config.measurements.values():
        for variants in profiles.values():
            for history in variants.values():
                yield from history


def update_config(
    path: Path, mutate: Callable[[CommentedMap], None], before: Callable[[], None] | None = None
) -> ModelConfig:
    """Apply `mutate` to the config's round-trip tree; validate; atomically replace; then remove what
    an interrupted writer left. Under the lock (`before` runs under it first: Parquet writes)."""
    path = Path(path)
    with config_lock(path):
        if before is not None:
            before()
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
        for leftover in _remove_leftovers(path, config):
            log.info("removed %s (left by an interrupted write)", leftover)
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
    key: ResultKey,
    source: str,
    metrics: dict[str, float],
    conditions: dict[str, Any],
    per_query: pd.DataFrame | None = None,
) -> ModelConfig:
    """Replace the target saved under `key` with this source's result."""
    path = _require_path(config)
    rel = f"{PER_QUERY_DIR}/{config.short_name}/targets/{key.file_stem()}.parquet" if per_query is not None else None

    def write_parquet() -> None:
        if rel is not None:
            _write_per_query(path, rel, per_query)

    def mutate(tree: CommentedMap) -> None:
        per_profile = _child(_child(_child(tree, "targets"), key.task), key.profile)
        per_profile[key.variant] = _entry(source, metrics, conditions, rel)

    return update_config(path, mutate, write_parquet)


def append_measurement(
    config: ModelConfig,
    key: ResultKey,
    source: str,
    metrics: dict[str, float],
    conditions: dict[str, Any],
    per_query: pd.DataFrame | None = None,
) -> tuple[ModelConfig, str]:
    """Append one entry to the measurement history; never rewrites or drops an existing one."""
    path = _require_path(config)
    measurement_id = f"{now_iso().replace(':', '').replace('+0000', 'Z')}-{source}-{secrets.token_hex(3)}"
    rel = (
        f"{PER_QUERY_DIR}/{config.short_name}/measurements/{measurement_id}.parquet" if per_query is not None else None
    )

    def write_parquet() -> None:
        if rel is not None:
            _write_per_query(path, rel, per_query)

    def mutate(tree: CommentedMap) -> None:
        per_profile = _child(_child(_child(tree, "measurements"), key.task), key.profile)
        history = per_profile.get(key.variant)
        if history is None:
            history = per_profile[key.variant] = CommentedSeq()
        history.append(_entry(source, metrics, conditions, rel, measurement_id))

    return update_config(path, mutate, write_parquet), measurement_id


def _legacy_variant(config: ModelConfig, key: ResultKey, saved: dict[str, Any]) -> str | None:
    """A legacy perf variant (`perf@<load>`) whose entry's recorded conditions say it is `key`."""
    legacy = key.legacy_variant
    if legacy is None or legacy not in saved:
        return None
    entry = saved[legacy]
    first = entry[-1] if isinstance(entry, list) and entry else entry
    if not isinstance(first, SavedResult):
        return None
    return legacy if perf_key_of_legacy(key.model, key.task, key.profile, legacy, first.conditions) == key else None


def find_target(config: ModelConfig, key: ResultKey) -> SavedResult | None:
    saved = config.targets.get(key.task, {}).get(key.profile, {})
    if key.variant in saved:
        return saved[key.variant]
    legacy = _legacy_variant(config, key, saved)
    return saved[legacy] if legacy else None


def find_history(config: ModelConfig, key: ResultKey) -> list[Measurement]:
    saved = config.measurements.get(key.task, {}).get(key.profile, {})
    history = list(saved.get(key.variant, []))
    legacy = key.legacy_variant
    if legacy and legacy in saved:  # entries saved before perf keys named engine and hardware
        history = [
            m for m in saved[legacy]
            if perf_key_of_legacy(key.model, key.task, key.profile, legacy, m.conditions) == key
        ] + history  # fmt: skip
    return history


def migrate_config(path: Path) -> list[str]:
    """Rename legacy perf variants to full perf keys from each entry's recorded conditions. Entries
    whose conditions do not say enough stay where they are (never dropped). Returns what moved."""
    moved: list[str] = []

    def mutate(tree: CommentedMap) -> None:
        for section in ("targets", "measurements"):
            for task, profiles in (tree.get(section) or {}).items():
                for profile, variants in (profiles or {}).items():
                    for variant in [v for v in variants if v.startswith("perf@") and "/" not in v]:
                        entries = variants[variant]
                        items = list(entries) if isinstance(entries, list) else [entries]
                        keep = []
                        for item in items:
                            new = perf_key_of_legacy(
                                tree.get("name") or str(tree["model_id"]).rsplit("/", 1)[-1],
                                task, profile, variant, dict(item.get("conditions") or {}),
                            )  # fmt: skip
                            if new is None:
                                keep.append(item)
                                continue
                            if section == "targets":
                                if new.variant in variants:  # a newer target exists: keep both
                                    keep.append(item)
                                    continue
                                variants[new.variant] = item
                            else:
                                variants.setdefault(new.variant, CommentedSeq()).append(item)
                            moved.append(f"{section}[{task}][{profile}][{variant}] -> [{new.variant}]")
                        if not keep:
                            del variants[variant]
                        elif isinstance(entries, list):
                            variants[variant] = CommentedSeq(keep)

    update_config(path, mutate)
    return moved


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
