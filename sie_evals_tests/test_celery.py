"""The eval jobs on Dagster's Celery executor (SIE_EVALS_EXECUTOR=celery): a real redis-server on
127.0.0.1 and two real Celery workers as separate processes, one on the `gpu` queue and one on `cpu`,
sharing a Dagster instance (SQLite under one DAGSTER_HOME) and the results/cache directories. An asset
backfill of a 3 x 2 model x task matrix, made as the UI's "Launch backfill" makes it and run by a real
`dagster-daemon` (backfill daemon, run queue, the workspace's code server), gives the same metrics, checks
and materializations as the in-process run, and the run logs show steps on both workers. The faults: a
worker lacking what its queue needs, the broker gone mid-run, a worker process killed mid-step."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.reconstruct import ReconstructableRepository
from ruamel.yaml import YAML

from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.checks import EVAL_CHECKS
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager
from sie_evals.defs.executors import CELERY_QUEUE_TAG, CELERY_SETTINGS, CPU_QUEUE, GPU_QUEUE
from sie_evals_tests.conftest import REPO_ROOT, add_asset_backfill, skip_unless_required

pytestmark = pytest.mark.slow

# The real MiniLM weights under three names, each with its own max_seq_length: three results.
MODELS = {"mini-a": 256, "mini-b": 128, "mini-c": 64}
TASKS = ("beir/SciFact", "mteb/STSBenchmark")
CELLS = [f"{m}:{t}:local" for m in MODELS for t in TASKS]
ASSETS = [task_dataset, embeddings, quality_scores]
SLICE = {"SIE_EVALS_LIMIT_QUERIES": "20", "SIE_EVALS_CORPUS_SIZE": "300"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def matrix_configs(root: Path) -> Path:
    """Three models x two tasks, local source, torch runtime (no ONNX calibration)."""
    yaml = YAML()
    src = yaml.load(REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml")
    root.mkdir()
    for name, seq in MODELS.items():
        cfg = dict(src)
        cfg.pop("targets", None)
        cfg["model_id"], cfg["name"] = f"test/{name}", name  # weights from the package, not the id
        profile = {**dict(src["profiles"]["default"]), "runtime": "torch", "max_seq_length": seq}
        cfg["profiles"] = {"default": profile}
        cfg["tasks"] = list(TASKS)
        cfg["sources"] = ["local"]
        with open(root / f"{name}.yaml", "w") as fh:
            yaml.dump(cfg, fh)
    return root


def wait_for(what: str, ok, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what} not ready after {timeout} s\n{tail}")


class Cluster:
    """redis-server and the two workers, each a process of its own with its log file."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env, self.procs = root, env, {}
        self.configs = root / "shared" / "model_configs"

    def start_redis(self, port: int) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            skip_unless_required("redis-server not installed (scripts/system_deps.sh installs it)")
        d = self.root / "redis"
        d.mkdir(exist_ok=True)
        args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "", "--appendonly", "no"]
        self._start("redis", args, cwd=d)

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for("redis-server", pong, 20, self.root / "redis.log")

    def start_worker(
        self, queue: str, name: str | None = None, app: str = "sie_evals.defs.celery_app", timeout: float = 120
    ) -> None:
        """A Celery worker process on `queue`, named `name` (default: the queue), running `app`."""
        name = name or queue
        celery = str(Path(sys.executable).with_name("celery"))
        args = [celery, "-A", app, "worker", "-Q", queue, "-n", f"{name}@%h"]
        args += ["--concurrency", "1", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        self._start(name, args, cwd=REPO_ROOT)
        log = self.root / f"{name}.log"
        wait_for(f"worker {name}", lambda: "ready." in log.read_text(), timeout, log)

    def start_daemon(self) -> None:
        """`dagster-daemon run` on the workspace: backfill daemon, run queue (QueuedRunCoordinator) and
        sensors; its code server and the run workers it launches are in its process group."""
        args = [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", "workspace.yaml"]
        self._start("daemon", args, cwd=REPO_ROOT, new_session=True)
        log = self.root / "daemon.log"
        wait_for("dagster-daemon", lambda: "BackfillDaemon" in log.read_text(), 180, log)

    def _start(self, name: str, args: list[str], cwd: Path, new_session: bool = False) -> None:
        with open(self.root / f"{name}.log", "w") as log:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(
                args, cwd=cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
            )

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if name == "daemon":  # the whole group: its code server and any run worker still running
                _signal_group(proc.pid, signal.SIGTERM)
            elif proc.poll() is None:
                proc.send_signal(signal.SIGTERM if name == "redis" else signal.SIGQUIT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if name == "daemon":
                _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


@contextlib.contextmanager
def running_cluster(tmp_path: Path, monkeypatch, gpu_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """redis-server, a `gpu` worker (with `gpu_env` added) and a `cpu` worker, stopped on the way out."""
    shared = tmp_path / "shared"  # what every worker sees: the instance, results, cache, configs
    home = shared / "dagster_home"
    home.mkdir(parents=True)
    # The repo's instance settings (run queue, `gpu` pool) without declarative automation: a daemon on it
    # would otherwise request perf_scores/target_comparison after the backfill (FOLLOW) and the report.
    (home / "dagster.yaml").write_text(
        (REPO_ROOT / "dagster.yaml").read_text() + "\nauto_materialize:\n  enabled: false\n  use_sensors: false\n"
    )
    configs = matrix_configs(shared / "model_configs")
    port = free_port()
    env = {
        "DAGSTER_HOME": str(home),
        "SIE_EVALS_EXECUTOR": "celery",
        "SIE_EVALS_CELERY_BROKER": f"redis://127.0.0.1:{port}/0",
        "SIE_EVALS_RESULTS_DIR": str(shared / "results"),
        "SIE_EVALS_CACHE_DIR": str(shared / "cache"),
        "SIE_EVALS_MODEL_CONFIGS_DIR": str(configs),
        "HF_HUB_OFFLINE": "1",
        **SLICE,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    c = Cluster(tmp_path, {**os.environ, **env})
    c.configs = configs
    try:
        c.start_redis(port)
        c.env = {**c.env, **(gpu_env or {})}
        c.start_worker("gpu")
        c.env = {k: v for k, v in c.env.items() if k not in (gpu_env or {})}
        c.start_worker("cpu")
        sync_partitions(dg.DagsterInstance.get(), configs)
        yield c
    finally:
        c.stop()


def eval_job():
    """What `dagster asset materialize -m sie_evals.definitions` runs: a job the workers rebuild by module."""
    repo = ReconstructableRepository.for_module("sie_evals.definitions", "defs", working_directory=str(REPO_ROOT))
    return repo.get_reconstructable_job("__ASSET_JOB")


def run_cell(cell: str, assets):
    return dg.execute_job(
        eval_job(),
        instance=dg.DagsterInstance.get(),
        tags={"dagster/partition": cell},
        asset_selection=[a.key for a in assets],
    )


def run_text(run_id: str) -> str:
    """Every message and error of a run's event log, as one text."""
    out = []
    for rec in dg.DagsterInstance.get().all_logs(run_id):
        out.append(rec.message or "")
        error = getattr(getattr(rec.dagster_event, "event_specific_data", None), "error", None)
        if error is not None:
            out.append(error.to_string())
    return "\n".join(out)


def metrics_of(events) -> dict[tuple[str, str | None], dict]:
    """Numeric metadata of each materialization, by (asset, partition): metrics and counts."""
    out = {}
    for mat in events:
        meta = {
            k: v.value
            for k, v in mat.metadata.items()
            if isinstance(v, (dg.FloatMetadataValue, dg.IntMetadataValue)) and not _condition(k)
        }
        out[(mat.asset_key.to_user_string(), mat.partition)] = meta
    return out


def _condition(key: str) -> bool:
    """Metadata of the run's conditions (machine load, timings), not of the result."""
    return key in ("cpu_count", "load_avg_1m") or "seconds" in key or key.endswith("_s") or "per_second" in key


def in_process_reference(tmp_path: Path, configs: Path, cells: list[str]) -> tuple[dict, dict]:
    settings = EvalSettings(
        results_dir=str(tmp_path / "ref" / "results"),
        cache_dir=str(tmp_path / "ref" / "cache"),
        model_configs_dir=str(configs),
        limit_queries=20,
        corpus_size=300,
    )
    resources = {
        "settings": settings,
        "engines": EngineFactory(),
        "json_io": JsonIOManager(base_dir=str(tmp_path / "io")),
        "io_manager": JsonIOManager(base_dir=str(tmp_path / "io")),
    }
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, configs)
    mats, checks = [], {}
    for cell in cells:
        res = dg.materialize([*ASSETS, *EVAL_CHECKS], partition_key=cell, instance=instance, resources=resources)
        mats += [e.materialization for e in res.get_asset_materialization_events()]
        checks.update({(cell, e.check_name): (e.passed, e.severity) for e in res.get_asset_check_evaluations()})
    return metrics_of(mats), checks


def launch_backfill(instance: dg.DagsterInstance, assets, partitions: list[str]) -> str:
    """An asset backfill of `partitions` of `assets`, made as the UI's "Launch backfill" (GraphQL
    `launchPartitionBackfill`) makes it: PartitionBackfill.from_asset_partitions on the definitions'
    asset graph, added to the instance REQUESTED; the daemon's backfill loop submits its runs."""
    from dagster._core.utils import make_new_backfill_id

    from sie_evals.definitions import defs

    backfill_id = make_new_backfill_id()
    add_asset_backfill(instance, defs().resolve_asset_graph(), partitions, [a.key for a in assets], backfill_id)
    return backfill_id


def wait_backfill(instance: dg.DagsterInstance, backfill_id: str, timeout: float, log: Path) -> str:
    """The backfill's final status, once it has one."""
    done = ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED")

    def status() -> str:
        return instance.get_backfill(backfill_id).status.value

    wait_for(f"backfill {backfill_id}", lambda: status() in done, timeout, log)
    return status()


def node_of(step_key: str) -> str:
    """The node a step runs (`embeddings.embed_shard[shard_1_of_1]` -> `embeddings.embed_shard`)."""
    return step_key.split("[", 1)[0]


def planned_queues(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, str]:
    """The Celery queue of each node of the run's execution plan, from its step tags (untagged: the
    default queue of the app's settings), as dagster-celery routes it."""
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    default = CELERY_SETTINGS["task_default_queue"]
    return {step.node_handle_id: (step.tags or {}).get(CELERY_QUEUE_TAG, default) for step in plan.steps}


def test_backfill_on_celery_equals_in_process(tmp_path, monkeypatch):
    """A backfill of the 3 x 2 matrix through a real dagster-daemon, each run's steps on the Celery
    workers: same metrics and checks as in-process, one materialization per asset and partition."""
    from dagster._core.storage.dagster_run import RunsFilter

    with running_cluster(tmp_path, monkeypatch) as c:
        instance = dg.DagsterInstance.get()
        c.start_daemon()
        backfill_id = launch_backfill(instance, ASSETS, CELLS)
        status = wait_backfill(instance, backfill_id, 900, c.root / "daemon.log")
        runs = instance.get_runs(filters=RunsFilter.for_backfill(backfill_id))
        failed = [r for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
        detail = "\n".join(f"{r.tags.get('dagster/partition')}: {run_text(r.run_id)[-2000:]}" for r in failed)
        assert status == "COMPLETED_SUCCESS", f"backfill {status}; worker logs under {c.root}\n{detail}"

    mats, checks, hosts, queues = [], {}, {}, {}
    for run in runs:
        assert run.tags.get("dagster/backfill") == backfill_id  # the daemon's runs, not the test's
        cell = run.tags["dagster/partition"]
        for rec in instance.all_logs(run.run_id):
            ev = rec.dagster_event
            if ev is None:
                continue
            if ev.is_step_materialization:
                mats.append(ev.step_materialization_data.materialization)
            elif ev.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
                data = ev.event_specific_data
                checks[(cell, data.check_name)] = (data.passed, data.severity)
            elif ev.is_engine_event and "Executing steps" in rec.message:
                worker = ev.engine_event_data.metadata["Celery worker"].value
                hosts.setdefault(node_of(ev.step_key), set()).add(worker.split("@")[0])
        queues.update(planned_queues(instance, run))
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(CELLS)  # one run per cell

    # Each step ran on the worker of the queue its tags name: the embedding on gpu; data, scores, checks on cpu.
    assert hosts == {node: {queues[node]} for node in hosts}, (hosts, queues)
    embedding = [n for n in hosts if n.rsplit(".", 1)[-1] in ("embeddings", "embed_shard")]
    assert embedding and all(hosts[n] == {GPU_QUEUE} for n in embedding), hosts
    assert hosts["quality_scores"] == hosts["task_dataset"] == {CPU_QUEUE}
    assert {q for qs in hosts.values() for q in qs} == {GPU_QUEUE, CPU_QUEUE}

    # Exactly one materialization per asset and partition in the whole instance (no run recorded twice).
    for asset in ASSETS:
        records = instance.fetch_materializations(asset.key, limit=100).records
        assert sorted(r.partition_key for r in records) == sorted(CELLS), asset.key
    got = metrics_of(mats)
    assert len(mats) == len(got) == len(CELLS) * len(ASSETS)
    ref_metrics, ref_checks = in_process_reference(tmp_path, c.configs, CELLS)
    assert got == ref_metrics
    assert checks == ref_checks and checks


def test_worker_lacking_what_its_queue_needs_fails_the_step_naming_itself(tmp_path, monkeypatch):
    """A `gpu` worker without a GPU or a package it must have: the run fails, naming the worker and what
    is missing; nothing of the gpu step is materialized."""
    import torch

    needs = {"SIE_EVALS_WORKER_REQUIRES": "gpu,sie_evals_no_such_package"}
    with running_cluster(tmp_path, monkeypatch, gpu_env=needs):
        res = run_cell(CELLS[0], [task_dataset, embeddings])
    text = run_text(res.run_id)
    assert not res.success
    assert f"Celery worker gpu@{socket.gethostname()} cannot run this step" in text
    assert "the Python package 'sie_evals_no_such_package'" in text
    assert ("a GPU (torch.cuda.is_available() is False)" in text) == (not torch.cuda.is_available())
    # The cpu worker's step ran; nothing the gpu worker was given was recorded.
    assert [e.asset_key.to_user_string() for e in res.get_asset_materialization_events()] == ["task_dataset"]


def test_broker_gone_mid_run_fails_the_run_with_a_clear_message(tmp_path, monkeypatch):
    """redis-server killed while the embedding step runs: the run fails, saying the broker/backend
    connection was refused; never a success."""
    with running_cluster(tmp_path, monkeypatch) as c:
        gpu_log = c.root / "gpu.log"

        def kill_broker_when_embedding_starts() -> None:
            wait_for("embedding step", lambda: "received" in gpu_log.read_text(), 120, gpu_log)
            c.procs["redis"].kill()

        killer = threading.Thread(target=kill_broker_when_embedding_starts, daemon=True)
        killer.start()
        res = run_cell(CELLS[0], ASSETS)
        killer.join(5)
        text = run_text(res.run_id)
    assert not res.success
    assert "Connection refused" in text or "Error 111" in text, text[-3000:]


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the prefork pool of a Celery worker), from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_worker_killed_mid_step_is_redelivered_and_recorded_once(tmp_path, monkeypatch):
    """SIGKILL of the process running the embedding step: Celery's late ack + reject on a lost worker
    deliver the step again, the run completes, its metrics equal the fault-free run and each asset of
    the partition is materialized exactly once."""
    cell = CELLS[0]
    with running_cluster(tmp_path, monkeypatch) as c:
        gpu_log = c.root / "gpu.log"
        killed: list[int] = []

        def kill_embedding_process() -> None:
            wait_for("embedding step", lambda: "received" in gpu_log.read_text(), 120, gpu_log)
            time.sleep(1.5)  # inside the step: loading the model and embedding take longer
            for pid in children(c.procs["gpu"].pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        killer = threading.Thread(target=kill_embedding_process, daemon=True)
        killer.start()
        res = run_cell(cell, ASSETS)
        killer.join(5)
        log = gpu_log.read_text()
        assert res.success, run_text(res.run_id)[-3000:]
        instance = dg.DagsterInstance.get()
        mats = [
            r.dagster_event.step_materialization_data.materialization
            for r in instance.all_logs(res.run_id)
            if r.dagster_event is not None and r.dagster_event.is_step_materialization
        ]
    assert killed and "SIGKILL" in log  # the pool process really died mid-task ...
    assert log.count("] received") == 2  # ... and its one task (embeddings) was received again
    assert sorted(m.asset_key.to_user_string() for m in mats) == sorted(a.key.to_user_string() for a in ASSETS)
    ref_metrics, _ = in_process_reference(tmp_path, c.configs, [cell])
    assert metrics_of(mats) == ref_metrics
