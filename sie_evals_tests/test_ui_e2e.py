"""End to end, as a user drives it: `dagster dev` (webserver + daemon) on a free loopback port, UI-style
asset backfills launched over GraphQL, alerts from the real sensor daemon to a real webhook receiver,
the report launched by the automation sensor, and a headless Chromium (the system's, via Playwright)
on the asset page.

The eval partitions are the cells the configs declare (the sync sensor fills them): six, and none of
the grid's other two (the multivector profile on STS, the uninstalled model on SciFact). A backfill of
the SciFact column, every run of which succeeds, ends COMPLETED_SUCCESS. In the STS column one cell
carries a target above any real result (its blocking quality check fails, its target_comparison is
skipped) and one config's weights package is not installed (its cell fails with that error): that
backfill ends COMPLETED_FAILED, with exactly those two cells red. Screenshots are kept under
test-artifacts/ for a human to look at; the test asserts on the page's text and on the partition
statuses the UI reads."""

import json
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.gates.keys import ResultKey
from sie_evals.lib.gates.saved_results import save_target
from sie_evals_tests.conftest import DATA, REPO_ROOT
from sie_evals_tests.ui_support import ARTIFACTS, Dagster, dagster_dev, dagster_home, system_chromium
from sie_evals_tests.webhook import WebhookReceiver

pytestmark = pytest.mark.slow

MODEL = "all-MiniLM-L6-v2"
TWIN = "minilm-twin"  # a second model config (same weights): more cells, one failing its target
UNINSTALLED = "minilm-uninstalled"  # a third config whose weights package is not installed, declared for STS
TASKS = ["beir/SciFact", "mteb/STSBenchmark"]
MULTIVECTOR = f"{MODEL}@multivector"  # an output profile: cells of its own (retrieval tasks only)
SCIFACT_COLUMN = sorted(f"{m}:beir/SciFact:local" for m in (MODEL, MULTIVECTOR, TWIN))
FAILING = f"{TWIN}:mteb/STSBenchmark:local"  # declared; fails its blocking quality check
BROKEN = f"{UNINSTALLED}:mteb/STSBenchmark:local"  # declared; its weights cannot load: the red cell
STS_COLUMN = sorted([f"{MODEL}:mteb/STSBenchmark:local", FAILING, BROKEN])
PASSING = [*SCIFACT_COLUMN, f"{MODEL}:mteb/STSBenchmark:local"]
UNDECLARED = [f"{MULTIVECTOR}:mteb/STSBenchmark:local", f"{UNINSTALLED}:beir/SciFact:local"]  # do not exist
ASSETS = ["task_dataset", "embeddings", "quality_scores", "perf_scores", "target_comparison"]


def _configs(tmp_path: Path) -> Path:
    """Three model configs (the real one, a twin, one whose weights package is not installed), local
    source only; the real one keeps its multivector profile (cells of its own, declared for SciFact, the
    retrieval task only); the uninstalled one declares STS only. The twin's STS target is out of reach."""
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
    key = ResultKey.quality(twin.short_name, "mteb/STSBenchmark", "test", {"limit": 20})
    save_target(twin, key, "local", {"cosine_spearman": 0.999}, {})
    return folder


@dataclass
class Backfills:
    dagster: Dagster
    statuses: dict[str, str]  # column -> the backfill's final status
    receiver: WebhookReceiver
    report_materialized: bool  # by the automation sensor, after the evals


@pytest.fixture(scope="module")
def backfill(tmp_path_factory, session_cache):
    """`dagster dev` with the test's configs, one backfill per task column launched over GraphQL and waited
    for; the webserver stays up for the module's tests (no browser needed for any of this)."""
    tmp_path = tmp_path_factory.mktemp("ui-e2e")
    home = dagster_home(tmp_path)
    receiver = WebhookReceiver()
    env = {
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
    }
    try:
        with dagster_dev(home, env) as dagster:
            started = time.monotonic()
            # the partitions come from the sync sensor; alerts and automation start after the history they find
            for sensor in ("eval_cells_sync", "check_failure_alerts", "default_automation_condition_sensor"):
                dagster.wait_ticked(sensor)
            for asset in ASSETS:
                dagster.wait_partitions(asset, SCIFACT_COLUMN + STS_COLUMN)
            statuses = {
                "beir/SciFact": dagster.backfill(ASSETS, SCIFACT_COLUMN, timeout=900),
                "mteb/STSBenchmark": dagster.backfill(ASSETS, STS_COLUMN, timeout=900),
            }
            print(f"backfills {statuses} after {time.monotonic() - started:.0f}s")
            deadline = time.monotonic() + 180  # the automation sensor's interval is 30 s; then the run
            while not (report := dagster.materialized("eval_report")) and time.monotonic() < deadline:
                time.sleep(3)
            yield Backfills(dagster, statuses, receiver, report)
    finally:
        receiver.close()


def test_only_declared_cells_exist(backfill):
    cells = backfill.dagster.partition_keys("quality_scores")
    assert sorted(cells) == sorted(SCIFACT_COLUMN + STS_COLUMN) and not set(UNDECLARED) & set(cells), cells
    assert backfill.dagster.partition_keys("task_dataset") == cells  # a cell's dataset: one chain per cell


def test_backfill_statuses_alerts_and_report(backfill):
    dagster, receiver = backfill.dagster, backfill.receiver
    # every run of the SciFact column succeeded: so did its backfill
    assert backfill.statuses == {"beir/SciFact": "COMPLETED_SUCCESS", "mteb/STSBenchmark": "COMPLETED_FAILED"}
    assert dagster.partition_statuses("task_dataset")["materialized"] == set(SCIFACT_COLUMN + STS_COLUMN)
    quality = dagster.partition_statuses("quality_scores")
    assert quality == {"materialized": {FAILING, *PASSING}, "failed": {BROKEN}}, quality
    comparison = dagster.partition_statuses("target_comparison")  # blocked for FAILING
    assert comparison == {"materialized": set(PASSING), "failed": {FAILING, BROKEN}}, comparison
    perf = dagster.partition_statuses("perf_scores")  # perf has no blocking check: FAILING is measured
    assert perf == {"materialized": {FAILING, *PASSING}, "failed": {BROKEN}}, perf
    assert backfill.report_materialized  # the report followed the evals

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
    ), json.dumps(receiver.alerts, indent=1)
    broken_alert = next(a for a in receiver.alerts if a["partition"] == BROKEN)
    assert (broken_alert["model"], broken_alert["task"]) == (UNINSTALLED, "mteb/STSBenchmark")
    assert receiver.alerts[0]["run_url"].startswith(f"{dagster.url}/runs/")


def test_asset_pages_in_chromium(backfill):
    chromium = system_chromium()
    assert backfill.statuses["beir/SciFact"] == "COMPLETED_SUCCESS", backfill.statuses
    _asset_pages(backfill.dagster.url, chromium)


def _asset_pages(url: str, chromium: str) -> None:
    """Headless Chromium on quality_scores: the failed check per partition, and the Partitions page with
    the red cell selected. Screenshots under test-artifacts/."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    checks_shot, cells_shot = ARTIFACTS / "quality_scores_checks.png", ARTIFACTS / "quality_scores_partitions.png"
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
        page.get_by_text(FAILING).first.wait_for(state="attached", timeout=60_000)
        page.wait_for_load_state("networkidle")
        checks_text = page.text_content("body")
        page.screenshot(path=str(checks_shot), full_page=True)

        # the Partitions page with the broken cell selected: the cells' health, and the cell's failed run
        cell = urllib.parse.quote(BROKEN)
        page.goto(f"{url}/assets/quality_scores?view=partitions&partition={cell}", wait_until="networkidle")
        page.get_by_text("did not materialize this asset").first.wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")
        cells_text = page.text_content("body")
        page.screenshot(path=str(cells_shot), full_page=True)
        browser.close()
    assert checks_shot.stat().st_size > 20_000 and cells_shot.stat().st_size > 20_000
    # the check's per-partition view: one failed, the declared others passed, the broken cell never ran
    assert "quality_vs_target" in checks_text and FAILING in checks_text, checks_text[:3000]
    assert "Failed (1)" in checks_text and f"Passed ({len(PASSING)})" in checks_text, checks_text[:3000]
    assert "Execution Failed (1)" in checks_text, checks_text[:3000]
    # exactly the declared cells, one red, none missing
    for label in SCIFACT_COLUMN + STS_COLUMN:
        assert label in cells_text, (label, cells_text[:3000])
    assert not any(u in cells_text for u in UNDECLARED), cells_text[:3000]
    assert "6 Partitions" in cells_text, cells_text[:3000]
    assert "Failed (1)" in cells_text and f"Materialized ({len(PASSING) + 1})" in cells_text, cells_text[:3000]
