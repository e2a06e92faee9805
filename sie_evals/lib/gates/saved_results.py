"""Targets and measurement history, saved into the hand-written model config.

Writes keep comments, key order and formatting (ruamel round-trip), validate the whole new config
against the schema before anything is replaced, go through a temp file + rename, and hold an
exclusive lock (a `.<config>.lock` file beside it) from read to rename, so concurrent writers never
lose each other's updates. Measurements are only ever appended. Per-query scores go to Parquet
files under `per_query/` beside the configs, referenced from the entry; so does a retrieval result's
ranking (`run`: query_id, doc_id, rank, score, the top k of 100 by default: lib/quality/ranking.py),
named `<key>.<sha256 prefix>.run.parquet` and saved by exactly the same scheme as the per-query file.

A save is one transaction whose commit point is the config's rename. Per-query scores get a new
name for every content (`<key>.<sha256 prefix>.parquet`) and are first written, fsynced, as a hidden
`.<name>.pending` file; once the config that references the name is in place, the pending file is
renamed to it and files no entry references any more (the previous target's) are deleted. So a save
killed at any step leaves either the old config with its old, untouched Parquet or the new config
with its new one (readers and the next writer also accept the pending file a save killed right after
the commit left; the next writer renames it). Everything else a killed save leaves is a hidden
file (git-ignored), removed by the next writer under the lock. A writer waiting for the lock says
which process holds it and gives up after `SIE_EVALS_LOCK_TIMEOUT_S` seconds (default 120) with an
error naming it."""

import fcntl
import hashlib
import io
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from sie_evals.lib.config.model_config import Measurement, ModelConfig, SavedResult, parse_model_config
from sie_evals.lib.core.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from sie_evals.lib.core.errors import ConfigError, InputError, SieEvalsError
from sie_evals.lib.core.parquet import ColumnKind, read_parquet_table
from sie_evals.lib.core.run_conditions import now_iso
from sie_evals.lib.core.text_files import read_utf8
from sie_evals.lib.gates.keys import ResultKey, perf_key_of_legacy

PER_QUERY_DIR = "per_query"
PENDING_SUFFIX = ".pending"
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


def _pending(file: Path) -> Path:
    """Where a save writes a per-query file before the config that references it is in place."""
    return file.with_name(f".{file.name}{PENDING_SUFFIX}")


def _settle(path: Path, config: ModelConfig) -> list[Path]:
    """Under the lock, with `config` the one in place: rename the pending per-query files it references
    to their names (roll forward), then remove temp files of interrupted writes, pending files no
    entry needs, and Parquet files under its per_query folder that no entry references (the ones
    this save replaced, or a killed writer's). Returns what was removed."""
    removed = list(path.parent.glob(f".{path.name}.*.tmp"))
    folder = path.parent / PER_QUERY_DIR / config.short_name
    if folder.is_dir():
        referenced = {(path.parent / rel).resolve() for entry in _all_entries(config) for rel in _files(entry)}
        # also over an existing file: same name, same content hash, and a damaged copy gets repaired
        moved = {file.parent for file in referenced if _pending(file).is_file()}
        for file in referenced:
            if _pending(file).is_file():
                os.replace(_pending(file), file)
        for parent in moved:
            fsync_dir(parent)  # the new names are durable before the old files go
        removed += [p for p in folder.rglob(".*") if p.is_file()]  # temp and pending files: hidden
        removed += [p for p in folder.rglob("*.parquet") if p.resolve() not in referenced and p not in removed]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def _files(entry: SavedResult) -> list[str]:
    """The files an entry references (per-query scores, ranking), relative to its config."""
    return [rel for rel in (entry.per_query, entry.run) if rel]


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
    """Apply `mutate` to the config's round-trip tree; validate; run `before` (the pending per-query
    writes: nothing is written for an update that does not validate); atomically replace; then settle
    per-query files. All under the lock."""
    path = Path(path)
    with config_lock(path):
        yaml = _round_trip_yaml()
        try:
            tree = yaml.load(read_utf8(path, ConfigError))
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
        if before is not None:
            before()
        atomic_write_text(path, new_text)  # the commit point of a save
        fsync_dir(path.parent)
        for leftover in _settle(path, config):
            log.info("removed %s (replaced, or left by an interrupted write)", leftover)
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
    run: str | None = None,
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
    if run:
        e["run"] = run
    return e


def _stage_per_query(
    config: ModelConfig, kind: str, stem: str, per_query: pd.DataFrame | None, suffix: str = ".parquet"
) -> tuple[str | None, Callable[[], None] | None]:
    """The new per-query (or, with suffix .run.parquet, ranking) file's path relative to the config (a
    new name for every content, so a save never overwrites a file an entry references), and the write
    of its pending file."""
    if per_query is None:
        return None, None
    data = per_query.to_parquet(index=False)
    rel = f"{PER_QUERY_DIR}/{config.short_name}/{kind}/{stem}.{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    file = _require_path(config).parent / rel

    def write_pending() -> None:
        atomic_write_bytes(_pending(file), data)
        fsync_dir(file.parent)  # durable before the config that references it

    return rel, write_pending


def _stage(
    config: ModelConfig, kind: str, stem: str, per_query: pd.DataFrame | None, run: pd.DataFrame | None
) -> tuple[str | None, str | None, Callable[[], None]]:
    """Both files of an entry staged: their names, and one step writing both pending files."""
    rel, write_scores = _stage_per_query(config, kind, stem, per_query)
    run_rel, write_run = _stage_per_query(config, kind, stem, run, ".run.parquet")

    def write_pending() -> None:
        for write in (write_scores, write_run):
            if write is not None:
                write()

    return rel, run_rel, write_pending


def save_target(
    config: ModelConfig,
    key: ResultKey,
    source: str,
    metrics: dict[str, float],
    conditions: dict[str, Any],
    per_query: pd.DataFrame | None = None,
    run: pd.DataFrame | None = None,
) -> ModelConfig:
    """Replace the target saved under `key` with this source's result (`run`: its ranking)."""
    path = _require_path(config)
    rel, run_rel, write_pending = _stage(config, "targets", key.file_stem(), per_query, run)

    def mutate(tree: CommentedMap) -> None:
        per_profile = _child(_child(_child(tree, "targets"), key.task), key.profile)
        per_profile[key.variant] = _entry(source, metrics, conditions, rel, run=run_rel)

    return update_config(path, mutate, write_pending)


def append_measurement(
    config: ModelConfig,
    key: ResultKey,
    source: str,
    metrics: dict[str, float],
    conditions: dict[str, Any],
    per_query: pd.DataFrame | None = None,
    run: pd.DataFrame | None = None,
) -> tuple[ModelConfig, str]:
    """Append one entry to the measurement history; never rewrites or drops an existing one."""
    path = _require_path(config)
    measurement_id = f"{now_iso().replace(':', '').replace('+0000', 'Z')}-{source}-{secrets.token_hex(3)}"
    rel, run_rel, write_pending = _stage(config, "measurements", measurement_id, per_query, run)

    def mutate(tree: CommentedMap) -> None:
        per_profile = _child(_child(_child(tree, "measurements"), key.task), key.profile)
        history = per_profile.get(key.variant)
        if history is None:
            history = per_profile[key.variant] = CommentedSeq()
        history.append(_entry(source, metrics, conditions, rel, measurement_id, run_rel))

    return update_config(path, mutate, write_pending), measurement_id


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


def _field_of(config: ModelConfig, entry: SavedResult) -> str:
    """Where `entry` sits in the config, for error messages: targets[task][profile][variant]."""
    for task, profiles in config.targets.items():
        for profile, variants in profiles.items():
            for variant, saved in variants.items():
                if saved is entry:
                    return f"targets[{task}][{profile}][{variant}]"
    for task, profiles in config.measurements.items():
        for profile, variants in profiles.items():
            for variant, history in variants.items():
                for i, saved in enumerate(history):
                    if saved is entry:
                        return f"measurements[{task}][{profile}][{variant}][{i}]"
    return "an entry"


def load_run(config: ModelConfig, entry: SavedResult) -> pd.DataFrame | None:
    """An entry's ranking (query_id, doc_id, rank, score); None when it has none or its file is gone."""
    from sie_evals.lib.quality.ranking import RUN_SCHEMA, check_run_frame

    what = f"the ranked results of {_field_of(config, entry)} in {config.path}"
    frame = _load_parquet(config, entry.run, RUN_SCHEMA, what)
    if frame is None or config.path is None or entry.run is None:
        return None
    return check_run_frame(frame, f"{config.path.parent / entry.run}: {what}")


def load_per_query(config: ModelConfig, entry: SavedResult) -> pd.DataFrame | None:
    """An entry's per-query scores; None when it has none or its file is gone. Files of any naming
    scheme (also the fixed `<key>.parquet` of older saves) are read through the entry's reference."""
    what = f"the per-query scores of {_field_of(config, entry)} in {config.path}"
    return _load_parquet(config, entry.per_query, {"query_id": "id"}, what)


def _load_parquet(
    config: ModelConfig, rel: str | None, required: Mapping[str, ColumnKind], what: str
) -> pd.DataFrame | None:
    if not rel or config.path is None:
        return None
    file = config.path.parent / rel
    remedy = (
        ". Re-save the result (--save-targets SOURCE), restore the file from git, or delete it "
        "(checks then run without per-query intervals)"
    )
    # a save killed right after its commit leaves the file pending; a writer may rename it meanwhile
    for candidate in (file, _pending(file), file):
        if not candidate.is_file():
            continue
        try:
            return read_parquet_table(candidate, required, what, remedy)
        except FileNotFoundError:
            continue
    return None


def _require_path(config: ModelConfig) -> Path:
    if config.path is None:
        raise ConfigError(f"model {config.model_id} was not loaded from a file; cannot save into it")
    return config.path


def parse_saved_ref(ref: str) -> tuple[str, str, str, str, str, int]:
    """`CONFIG#targets/<task>/<profile>/<variant>` or `CONFIG#measurements/<task>/<profile>/<variant>[~N]`
    (N back from the latest, as in git) -> (config, kind, task, profile, variant, back). CONFIG is a model
    config file or a model id / short name; the task may hold slashes (beir/SciFact)."""
    config, _, where = ref.partition("#")
    kind, _, rest = where.partition("/")
    parts = rest.split("/")
    if kind not in ("targets", "measurements") or len(parts) < 3 or not all(parts):
        raise InputError(
            f"{ref}: a saved result is addressed as CONFIG#targets/<task>/<profile>/<variant> or "
            "CONFIG#measurements/<task>/<profile>/<variant>[~N], "
            "e.g. all-MiniLM-L6-v2#targets/beir/SciFact/default/test"
        )
    variant, back = parts[-1], 0
    if kind == "measurements" and "~" in variant:
        variant, _, n = variant.rpartition("~")
        if not n.isdigit():
            raise InputError(f"{ref}: ~N must be a whole number of measurements back from the latest")
        back = int(n)
    return config, kind, "/".join(parts[:-2]), parts[-2], variant, back


def saved_entry(ref: str, configs_dir: Path | None) -> tuple[ModelConfig, SavedResult]:
    """The target or measurement `ref` (parse_saved_ref) addresses; InputError naming what is missing."""
    from sie_evals.lib.config.model_config import find_model_config, load_model_config

    name, kind, task, profile, variant, back = parse_saved_ref(ref)
    config = load_model_config(Path(name)) if Path(name).is_file() else find_model_config(name, configs_dir)
    saved = (config.targets if kind == "targets" else config.measurements).get(task, {}).get(profile, {})
    entry = saved.get(variant)
    if isinstance(entry, list):
        entry = entry[-1 - back] if back < len(entry) else None
    if entry is None:
        there = ", ".join(f"{task}/{profile}/{v}" for v in saved) or "none for this task and profile"
        raise InputError(f"{ref}: nothing saved there in {config.path} ({kind}: {there})")
    return config, entry
