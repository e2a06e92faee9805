"""End to end, as a user drives it: `dagster dev` (webserver + daemon) on a free loopback port, a UI-style
asset backfill of several partitions launched over GraphQL, alerts from the real sensor daemon to a
real webhook receiver, and a headless Chromium (the system's, via Playwright) on the asset page.

Eval assets are partitioned model x task, so a backfill of two tasks reaches every cell of the grid:
four rows (three model configs, plus the multivector output profile of one) by two columns. One
declared cell carries a target above any real result: its blocking quality check fails, its
target_comparison is skipped. One config's weights package is not installed: its one declared cell
(STS) fails with that error, the red cell of quality_scores' matrix. The two cells no config declares
(the multivector profile on STS, the uninstalled model on SciFact) are skipped: they stay missing, and
neither fails nor alerts. The other cells of the same backfill succeed. Screenshots are kept under
test-artifacts/ for a human to look at; the test asserts on the page's text and on the partition
statuses the UI reads."""

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from ruamel.yaml import YAML

from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.gates.keys import ResultKey
from sie_evals.lib.gates.saved_results import save_target
from sie_evals_tests.conftest import DATA, REPO_ROOT, skip_unless_required
from sie_evals_tests.webhook import WebhookReceiver

pytestmark = pytest.mark.slow

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
MODEL = "all-MiniLM-L6-v2"
TWIN = "minilm-twin"  # a second model config (same weights): more partitions, one failing its target
UNINSTALLED = "minilm-uninstalled"  # a third config whose weights package is not installed, declared for STS
TASKS = ["beir/SciFact", "mteb/STSBenchmark"]
MULTIVECTOR = f"{MODEL}@multivector"  # an output profile: a row of its own (retrieval tasks only)
ROWS = sorted([f"{MODEL}:local", f"{MULTIVECTOR}:local", f"{TWIN}:local", f"{UNINSTALLED}:local"])  # `model`
FAILING = f"{TWIN}:beir/SciFact:local"  # declared; fails its blocking quality check
BROKEN = f"{UNINSTALLED}:mteb/STSBenchmark:local"  # declared; its weights cannot load: the red cell
BROKEN_PARTITION = f"{UNINSTALLED}:local|mteb/STSBenchmark"
UNDECLARED = [f"{MULTIVECTOR}:mteb/STSBenchmark:local", f"{UNINSTALLED}:beir/SciFact:local"]  # skipped
PASSING = [
    f"{MODEL}:beir/SciFact:local",
    f"{MODEL}:mteb/STSBenchmark:local",
    f"{TWIN}:mteb/STSBenchmark:local",
    f"{MULTIVECTOR}:beir/SciFact:local",
]
ASSETS = ["task_dataset", "embeddings", "quality_scores", "perf_scores", "target_comparison"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reset_signals() -> None:
    # Some shells start background jobs with SIGINT/SIGTERM ignored; children would inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _configs(tmp_path: Path) -> Path:
    """Three model configs (the real one, a twin, one whose weights package is not installed), local
    source only; the real one keeps its multivector profile (a row of its own, declared for SciFact, the
    retrieval task); the uninstalled one declares STS only."""
    folder = tmp_path / "model_configs"
    folder.mkdir()
    yaml = YAML()
    source = REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    for name, filename in ((MODEL, source.name), (TWIN, "minilm-twin.yaml"), (UNINSTALLED, "uninstalled.yaml")):
        tree = yaml.load(source.read_text())
        tree["name"] = name
        if name != MODEL:
            tree["model_id"] = f"sie-evals-tests/{name}"  # ids are unique; the twin's weights are the same package
        tree["tasks"] = TASKS
        if name == UNINSTALLED:
            tree["tasks"] = ["mteb/STSBenchmark"]
            tree["weights"] = {"package": "sie-evals-tests-weights-not-installed"}
        tree["sources"] = ["local"]
        tree["targets"], tree["measurements"] = {}, {}
        keep = {"default", "multivector"} if name == MODEL else {"default"}
        for profile in [p for p in tree["profiles"] if p not in keep]:
            del tree["profiles"][profile]
        with open(folder / filename, "w") as fh:
            yaml.dump(tree, fh)
    twin = find_model_config(TWIN, folder)
    key = ResultKey.quality(twin.short_name, "beir/SciFact", "test", {"limit_queries": 20, "corpus_size": 200})
    save_target(twin, key, "local", {"ndcg_at_10": 0.999}, {})
    return folder


class Dagster:
    def __init__(self, url: str):
        self.url = url

    def gql(self, query: str, **variables) -> dict:
        reply = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        reply.raise_for_status()
        body = reply.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_loaded(self, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
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
        data = self.gql(
            """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
                 ... on Sensor { sensorState { status ticks(limit: 1) { status } } } } }""",
            s={"repositoryLocationName": "sie_evals", "repositoryName": "__repository__", "sensorName": name},
        )
        state = data["sensorOrError"]["sensorState"]
        return state["status"] == "RUNNING" and bool(state["ticks"])

    def materialized_partitions(self, asset: str) -> set[str]:
        data = self.gql(
            """query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) {
                 ... on AssetNode { assetPartitionStatuses {
                   ... on DefaultPartitionStatuses { materializedPartitions } } } } }""",
            k={"path": [asset]},
        )
        return set(data["assetNodeOrError"]["assetPartitionStatuses"]["materializedPartitions"])

    def cell_statuses(self, asset: str) -> dict[str, set[str]]:
        """Materialized and failed cells of a model x task asset, as the UI's Partitions page reads them:
        ranges of the primary dimension (`model`), each with the statuses of the other (`task`)."""
        data = self.gql(
            """query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) {
                 ... on AssetNode { assetPartitionStatuses { ... on MultiPartitionStatuses {
                   primaryDimensionName ranges { primaryDimStartKey primaryDimEndKey secondaryDim {
                     ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } } } } } } } }""",
            k={"path": [asset]},
        )
        statuses = data["assetNodeOrError"]["assetPartitionStatuses"]
        assert statuses["primaryDimensionName"] == "model", statuses
        cells: dict[str, set[str]] = {"materialized": set(), "failed": set()}
        for span in statuses["ranges"]:
            rows = ROWS[ROWS.index(span["primaryDimStartKey"]) : ROWS.index(span["primaryDimEndKey"]) + 1]
            for status in cells:
                for task in span["secondaryDim"][f"{status}Partitions"]:
                    cells[status] |= {_eval_key(row, task) for row in rows}
        return cells


def _eval_key(row: str, task: str) -> str:
    """`model:source` x task -> model:task:source, as alerts and reports name a cell."""
    model, source = row.split(":")
    return f"{model}:{task}:{source}"


@dataclass
class Backfill:
    dagster: Dagster
    port: int
    status: str  # the backfill's final status
    receiver: WebhookReceiver


@pytest.fixture(scope="module")
def backfill(tmp_path_factory, session_cache):
    """`dagster dev` with the test's configs, a two-task backfill launched over GraphQL and waited for; the
    webserver stays up for the module's tests (no browser needed for any of this)."""
    tmp_path = tmp_path_factory.mktemp("ui-e2e")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    port = _free_port()
    receiver = WebhookReceiver()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "SIE_EVALS_MODEL_CONFIGS_DIR": str(_configs(tmp_path)),
        "SIE_EVALS_DATA_DIR": str(DATA),
        "SIE_EVALS_CACHE_DIR": str(session_cache),
        "SIE_EVALS_RESULTS_DIR": str(tmp_path / "results"),
        "SIE_EVALS_LIMIT_QUERIES": "20",
        "SIE_EVALS_CORPUS_SIZE": "200",
        "SIE_EVALS_PERF_REQUESTS": "6",
        "SIE_EVALS_PERF_CONCURRENCY": "2",
        "SIE_EVALS_PERF_WARMUP_REQUESTS": "2",
        "SIE_EVALS_PERF_TRIALS": "1",
        "SIE_EVALS_ALERT_WEBHOOK_URL": receiver.url,
        "SIE_EVALS_ALERT_INTERVAL_S": "5",
        "SIE_EVALS_DAGSTER_URL": f"http://127.0.0.1:{port}",
    }
    log = tmp_path / "dagster-dev.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_reset_signals,
        )
    dagster = Dagster(f"http://127.0.0.1:{port}")
    try:
        started = time.monotonic()
        dagster.wait_loaded(proc, log)
        print(f"dagster dev loaded in {time.monotonic() - started:.0f}s")
        # alerts start after the history a sensor finds: let the check sensor take its first tick
        deadline = time.monotonic() + 120
        while not dagster.sensor_ticked("check_failure_alerts"):
            assert time.monotonic() < deadline, "check_failure_alerts never ticked"
            time.sleep(2)

        launched = dagster.gql(
            """mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
                 __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
            p={"assetSelection": [{"path": [a]} for a in ASSETS], "partitionNames": TASKS},
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        deadline = time.monotonic() + 900
        while True:
            status = dagster.gql(
                """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
                     ... on PartitionBackfill { status } } }""",
                id=backfill_id,
            )["partitionBackfillOrError"]["status"]
            if status.startswith("COMPLETED") or status in ("FAILED", "CANCELED"):
                break
            assert time.monotonic() < deadline, f"backfill still {status}: {log.read_text()[-3000:]}"
            time.sleep(3)
        print(f"backfill {status} after {time.monotonic() - started:.0f}s")
        yield Backfill(dagster, port, status, receiver)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        receiver.close()


def test_backfill_statuses_and_alerts(backfill):
    dagster, receiver, port = backfill.dagster, backfill.receiver, backfill.port
    # completed: one declared cell fails its blocking check, the uninstalled model's cell fails to embed
    assert backfill.status.startswith("COMPLETED"), backfill.status
    assert dagster.materialized_partitions("task_dataset") == set(TASKS)
    quality = dagster.cell_statuses("quality_scores")
    assert quality == {"materialized": {FAILING, *PASSING}, "failed": {BROKEN}}, quality
    comparison = dagster.cell_statuses("target_comparison")  # blocked for FAILING
    assert comparison == {"materialized": set(PASSING), "failed": {FAILING, BROKEN}}, comparison

    # the daemon's sensors alert once for the failed check and once for each failed run
    deadline = time.monotonic() + 120
    while len(receiver.alerts) < 3 and time.monotonic() < deadline:
        time.sleep(2)
    time.sleep(12)  # two more sensor intervals: nothing further may arrive
    kinds = sorted((a["kind"], a["partition"], a["title"]) for a in receiver.alerts)
    assert kinds == sorted(
        [
            ("check", FAILING, "quality_scores.quality_vs_target"),
            ("run", FAILING, "__ASSET_JOB"),
            ("run", BROKEN, "__ASSET_JOB"),
        ]
    ), receiver.alerts
    broken_alert = next(a for a in receiver.alerts if a["partition"] == BROKEN)
    assert (broken_alert["model"], broken_alert["task"]) == (UNINSTALLED, "mteb/STSBenchmark")
    assert receiver.alerts[0]["run_url"].startswith(f"http://127.0.0.1:{port}/runs/")


@pytest.fixture(scope="module")
def chromium() -> str:
    """The system's Chromium and Playwright: only the asset-page screenshots need them."""
    if CHROMIUM is None or importlib.util.find_spec("playwright") is None:
        skip_unless_required("no system Chromium or no playwright (.ci/run installs Debian's chromium)")
    return CHROMIUM


def test_asset_pages_in_chromium(chromium, backfill):  # chromium first: a missing browser starts no Dagster
    assert backfill.status.startswith("COMPLETED"), backfill.status
    _asset_pages(backfill.dagster.url, chromium)


def _asset_pages(url: str, chromium: str) -> None:
    """Headless Chromium on quality_scores: the failed check per partition, and the Partitions page's
    model x task matrix with the red cell selected. Screenshots under test-artifacts/."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    checks_shot, matrix_shot = ARTIFACTS / "quality_scores_checks.png", ARTIFACTS / "quality_scores_partitions.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # the first-visit "Join the Dagster community" dialog may open at any moment: dismiss it
        page.add_locator_handler(
            page.get_by_text("Join the Dagster community"),
            lambda: page.get_by_role("button", name="Skip").click(),
        )
        page.goto(f"{url}/assets/quality_scores?view=checks", wait_until="networkidle")
        page.get_by_text("quality_vs_measurement").first.wait_for(timeout=60_000)
        page.get_by_text("quality_vs_target").first.click()
        page.get_by_text("This is a blocking asset check").first.wait_for(timeout=60_000)
        page.get_by_text("Partitions", exact=True).last.click()  # the check's per-partition results
        # labels are middle-truncated on screen; the full text is in the DOM
        page.get_by_text(f"{TWIN}:local").first.wait_for(state="attached", timeout=60_000)
        page.wait_for_load_state("networkidle")
        checks_text = page.text_content("body")
        page.screenshot(path=str(checks_shot), full_page=True)

        # the Partitions page with the broken cell selected: its row's health dots (red, and grey for
        # the undeclared SciFact cell), that row's cell per task (STS red), and the cell's failed run
        cell = urllib.parse.quote(BROKEN_PARTITION)
        page.goto(f"{url}/assets/quality_scores?view=partitions&partition={cell}", wait_until="networkidle")
        page.get_by_text("did not materialize this asset").first.wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")
        matrix_text = page.text_content("body")
        dimensions = [page.get_by_placeholder(f"Filter by {name}").count() for name in ("model", "task")]
        page.screenshot(path=str(matrix_shot), full_page=True)
        browser.close()
    assert checks_shot.stat().st_size > 20_000 and matrix_shot.stat().st_size > 20_000
    # the check's per-partition view: one failed, the declared others passed, the broken cell never ran
    assert "quality_vs_target" in checks_text and f"{TWIN}:local" in checks_text, checks_text[:3000]
    assert "Failed (1)" in checks_text and f"Passed ({len(PASSING)})" in checks_text, checks_text[:3000]
    assert "Execution Failed (1)" in checks_text, checks_text[:3000]
    # one list per dimension (rows: model:source, columns: task), every label, the grid's health
    assert dimensions == [1, 1], dimensions
    for label in (*ROWS, *TASKS):
        assert label in matrix_text, (label, matrix_text[:3000])
    assert f"{len(ROWS) * len(TASKS)} Partitions" in matrix_text, matrix_text[:3000]
    assert "Failed (1)" in matrix_text and f"Materialized ({len(PASSING) + 1})" in matrix_text, matrix_text[:3000]
    assert f"Missing ({len(UNDECLARED)})" in matrix_text, matrix_text[:3000]  # skipped, never red
    assert BROKEN_PARTITION in matrix_text, matrix_text[:3000]
