"""A partition materialized against a real PostgreSQL server (started here) through the documented
deploy/postgres/dagster.yaml. `.ci/run` installs PostgreSQL from Debian packages when missing."""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest

from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.checks import quality_vs_target
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager
from sie_evals_tests.conftest import REPO_ROOT, skip_unless_required

KEY = "all-MiniLM-L6-v2:beir/SciFact:local"
PASSWORD = "pw-" + os.urandom(6).hex()


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    bindir = _bindir()
    if bindir is None:
        skip_unless_required("PostgreSQL is not installed (.ci/run installs it: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="sie-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: use the Debian package's postgres user
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD)
    if as_user:
        os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
    data, port = root / "data", _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "dagster", f"--pwfile={pwfile}", "--auth=scram-sha-256")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start")
    try:
        env = {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "dagster", "PGPASSWORD": PASSWORD}
        subprocess.run(
            [str(bindir / "createdb"), "dagster_test"], env={**os.environ, **env}, check=True, capture_output=True
        )
        yield {**env, "PGDATABASE": "dagster_test"}
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_materialize_partition_on_postgres(postgres, tmp_path, session_cache, monkeypatch):
    for name, value in postgres.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    resources = {
        "settings": EvalSettings(
            results_dir=str(tmp_path / "results"), cache_dir=str(session_cache), limit_queries=20, corpus_size=200
        ),
        "engines": EngineFactory(),
        "json_io": JsonIOManager(base_dir=str(tmp_path / "io")),
        "io_manager": JsonIOManager(base_dir=str(tmp_path / "io")),
    }
    defs = [task_dataset, embeddings, quality_scores, quality_vs_target]
    sync_partitions(instance)  # the eval_cells_sync sensor's first tick
    assert dg.materialize(
        defs, selection=[task_dataset], partition_key=KEY, instance=instance, resources=resources
    ).success
    start = time.perf_counter()
    result = dg.materialize(
        defs,
        selection=dg.AssetSelection.assets(embeddings, quality_scores),
        partition_key=KEY,
        instance=instance,
        resources=resources,
    )
    assert result.success, time.perf_counter() - start

    # read back through a second instance on the same database: nothing lives in local files
    again = dg.DagsterInstance.from_config(str(home))
    event = again.get_latest_materialization_event(dg.AssetKey("quality_scores"))
    assert event is not None and event.dagster_event.partition == KEY
    assert 0.3 < event.asset_materialization.metadata["ndcg_at_10"].value <= 1
    history = again.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("quality_scores"), "quality_vs_target"), limit=5
    )
    assert [r.partition for r in history] == [KEY] and history[0].status.value == "SUCCEEDED"

    import psycopg2

    with psycopg2.connect(dbname="dagster_test") as conn, conn.cursor() as cur:
        cur.execute("select count(*) from runs")
        assert cur.fetchone()[0] == 2
