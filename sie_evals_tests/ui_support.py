"""Helpers for tests that drive the real Dagster UI: `dagster dev` (webserver + daemon) on a free loopback
port under a temp DAGSTER_HOME, its GraphQL API, a backfill waited for, and the system's Chromium through
Playwright (no browser download). The way test_ui_e2e.py does it, shared."""

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from sie_evals_tests.conftest import REPO_ROOT, skip_unless_required

ARTIFACTS = REPO_ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def system_chromium() -> str:
    """The system's Chromium, with Playwright importable: skip locally, fail under CI when missing."""
    found = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    if found is None or importlib.util.find_spec("playwright") is None:
        skip_unless_required("no system Chromium or no playwright (.ci/run installs Debian's chromium)")
    return found


def _reset_signals() -> None:
    # Some shells start background jobs with SIGINT/SIGTERM ignored; children would inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Dagster:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path):
        self.url = url
        self.proc = proc
        self.log = log  # dagster dev's output, quoted when something times out

    def gql(self, query: str, **variables) -> dict:
        reply = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        reply.raise_for_status()
        body = reply.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_loaded(self, timeout: float = 240) -> None:
        proc, log = self.proc, self.log
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"dagster dev exited: {log.read_text()[-3000:]}"
            try:
                data = self.gql("{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }")
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                    return
            except (requests.RequestException, AssertionError, KeyError, TypeError):
                pass
            time.sleep(1)
        raise AssertionError(f"dagster dev not ready in {timeout}s: {log.read_text()[-3000:]}")

    def sensor_ticked(self, name: str) -> bool:
        """The sensor is running and has taken at least one tick."""
        data = self.gql(
            """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
                 ... on Sensor { sensorState { status ticks(limit: 1) { status } } } } }""",
            s={"repositoryLocationName": "sie_evals", "repositoryName": "__repository__", "sensorName": name},
        )
        state = data["sensorOrError"]["sensorState"]
        return state["status"] == "RUNNING" and bool(state["ticks"])

    def wait_ticked(self, name: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.sensor_ticked(name):
            assert time.monotonic() < deadline, f"{name} never ticked: {self.log.read_text()[-3000:]}"
            time.sleep(2)

    def wait_partitions(self, asset: str, keys: list[str], timeout: float = 120) -> None:
        """Until the asset has these partitions: a sync sensor's first tick may be listed (STARTED) before the
        partitions it requests are added."""
        deadline = time.monotonic() + timeout
        while missing := sorted(set(keys) - set(self.partition_keys(asset))):
            assert time.monotonic() < deadline, f"{asset} lacks partitions {missing}: {self.log.read_text()[-3000:]}"
            time.sleep(2)

    def partition_keys(self, asset: str) -> list[str]:
        data = self.gql(
            """query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { ... on AssetNode { partitionKeys } } }""",
            k={"path": [asset]},
        )
        return data["assetNodeOrError"]["partitionKeys"]

    def partition_statuses(self, asset: str) -> dict[str, set[str]]:
        """Materialized and failed partitions of an asset, as its Partitions page reads them."""
        data = self.gql(
            """query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) {
                 ... on AssetNode { assetPartitionStatuses {
                   ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } } }""",
            k={"path": [asset]},
        )
        statuses = data["assetNodeOrError"]["assetPartitionStatuses"]
        return {"materialized": set(statuses["materializedPartitions"]), "failed": set(statuses["failedPartitions"])}

    def materialized(self, asset: str) -> bool:
        """An unpartitioned asset has a materialization."""
        data = self.gql(
            """query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) {
                 ... on AssetNode { assetMaterializations(limit: 1) { runId } } } }""",
            k={"path": [asset]},
        )
        return bool(data["assetNodeOrError"]["assetMaterializations"])

    def backfill(self, assets: list[str], partitions: list[str], timeout: float = 600) -> str:
        """Launch a partition backfill as the UI does and wait for it; its final status."""
        launched = self.gql(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
                 __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
            p={"assetSelection": [{"path": [a]} for a in assets], "partitionNames": partitions},
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        deadline = time.monotonic() + timeout
        while True:
            status = self.gql(
                """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
                     ... on PartitionBackfill { status } } }""",
                id=launched["backfillId"],
            )["partitionBackfillOrError"]["status"]
            if status.startswith("COMPLETED") or status in ("FAILED", "CANCELED"):
                return status
            assert time.monotonic() < deadline, f"backfill still {status}: {self.log.read_text()[-3000:]}"
            time.sleep(2)


def dagster_home(tmp_path: Path) -> Path:
    """A fresh DAGSTER_HOME with the repo's dagster.yaml."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


@contextlib.contextmanager
def dagster_dev(home: Path, env: dict[str, str], wait: bool = True) -> Iterator[Dagster]:
    """`dagster dev` of this repo's workspace on DAGSTER_HOME `home` (see dagster_home) with `env` on top
    of os.environ, loaded (or, with wait=False, still starting: call wait_loaded after preparing something
    meanwhile); its whole process group is stopped on exit."""
    port = free_port()
    log = home.parent / "dagster-dev.log"
    full_env = {**os.environ, "DAGSTER_HOME": str(home), "SIE_EVALS_DAGSTER_URL": f"http://127.0.0.1:{port}", **env}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_reset_signals,
        )
    dagster = Dagster(f"http://127.0.0.1:{port}", proc, log)
    try:
        if wait:
            dagster.wait_loaded()
        yield dagster
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
