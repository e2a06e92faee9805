"""The regressed-queries table of a failed check, as a user sees it in the Dagster UI: `dagster dev` on a
free loopback port with a temp DAGSTER_HOME; real runs recorded in that instance (the SciFact cell's
default profile, saved as the target of the `short` profile, documents cut to 16 tokens; then the
`short` profile, whose blocking quality check fails); headless Chromium (the system's, via Playwright)
opens the check at the link an alert carries, opens the latest execution's regressed_queries, and the
table's rows are on the page. Screenshot under test-artifacts/. (test_ui_e2e.py covers runs launched
through the UI and the daemon.)"""

import json
import time

import dagster as dg
import pandas as pd
import pytest
from ruamel.yaml import YAML

from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.checks import quality_vs_measurement, quality_vs_target
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager
from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.gates.drift import REGRESSED_QUERIES
from sie_evals.lib.gates.keys import ResultKey
from sie_evals.lib.gates.saved_results import save_target
from sie_evals.lib.reporting.alerts import check_url
from sie_evals_tests.conftest import DATA, MODEL_ID, REPO_ROOT, SCIFACT
from sie_evals_tests.ui_support import ARTIFACTS, dagster_dev, dagster_home, system_chromium

pytestmark = pytest.mark.slow

TASK = "beir/SciFact"
KEY = "all-MiniLM-L6-v2:beir/SciFact:local"
SLICE = {"limit_queries": 20, "corpus_size": 200}
SHORT = "short"


def _configs(tmp_path):
    """The MiniLM config alone: SciFact, local, the default profile and `short`; nothing saved."""
    folder = tmp_path / "model_configs"
    folder.mkdir()
    source = REPO_ROOT / "model_configs" / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    yaml = YAML()
    tree = yaml.load(source.read_text())
    tree["tasks"], tree["sources"] = [TASK], ["local"]
    tree["targets"], tree["measurements"] = {}, {}
    for profile in [p for p in tree["profiles"] if p != "default"]:
        del tree["profiles"][profile]
    tree["profiles"]["default"]["runtime"] = "torch"  # no runtime calibration: this test is about the UI
    tree["profiles"][SHORT] = {"max_seq_length": 16}
    with open(folder / source.name, "w") as fh:
        yaml.dump(tree, fh)
    return folder


def _resources(tmp_path, session_cache, configs, profile: str) -> dict:
    settings = EvalSettings(
        results_dir=str(tmp_path / "results"),
        cache_dir=str(session_cache),
        model_configs_dir=str(configs),
        profile=profile,
        **SLICE,
    )
    return {"settings": settings, "engines": EngineFactory(), "json_io": JsonIOManager(base_dir=str(tmp_path / "io"))}


def _failing_run(tmp_path, session_cache, configs, instance) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real runs recorded in the UI's instance: the default profile's result saved as the target of
    the `short` profile's cell, then the `short` profile, whose blocking check fails. The per-query
    scores of both."""
    defs = [task_dataset, embeddings, quality_scores, quality_vs_target, quality_vs_measurement]
    default = _resources(tmp_path, session_cache, configs, "default")
    sync_partitions(instance, configs)  # the eval_cells_sync sensor's first tick
    assert dg.materialize(defs, selection=[task_dataset], partition_key=KEY, instance=instance, resources=default)
    evals = dg.AssetSelection.assets(embeddings, quality_scores)
    reference = dg.materialize(defs, selection=evals, partition_key=KEY, instance=instance, resources=default)
    value = reference.output_for_node("quality_scores")
    target = pd.read_parquet(value["per_query_path"])  # the next run writes the same file
    config = find_model_config(MODEL_ID, configs)
    key = ResultKey.quality(config.short_name, TASK, "test", SLICE, SHORT)
    save_target(config, key, "local", {"ndcg_at_10": value["metrics"]["ndcg_at_10"]}, value["conditions"], target)
    short = _resources(tmp_path, session_cache, configs, SHORT)
    failed = dg.materialize(
        defs, selection=evals, partition_key=KEY, instance=instance, resources=short, raise_on_error=False
    )
    assert not failed.success  # the blocking check failed
    return target, pd.read_parquet(failed.output_for_node("quality_scores")["per_query_path"])


def test_failed_check_shows_regressed_queries_in_chromium(tmp_path, session_cache, monkeypatch):
    chromium = system_chromium()  # first: a missing browser starts no Dagster
    configs = _configs(tmp_path)
    home = dagster_home(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()
    instance.get_runs(limit=1)  # its storage exists before dagster dev opens it too
    env = {
        "HF_HUB_OFFLINE": "1",
        "SIE_EVALS_MODEL_CONFIGS_DIR": str(configs),
        "SIE_EVALS_DATA_DIR": str(DATA),
        "SIE_EVALS_RESULTS_DIR": str(tmp_path / "results"),
        "SIE_EVALS_LIMIT_QUERIES": str(SLICE["limit_queries"]),
        "SIE_EVALS_CORPUS_SIZE": str(SLICE["corpus_size"]),
        "SIE_EVALS_PROFILE": SHORT,
    }
    started = time.monotonic()
    with dagster_dev(home, env, wait=False) as dagster:  # it loads while the runs go
        target, now = _failing_run(tmp_path, session_cache, configs, instance)
        print(f"runs done after {time.monotonic() - started:.0f}s")
        dagster.wait_loaded()
        print(f"dagster dev loaded after {time.monotonic() - started:.0f}s")
        monkeypatch.setenv("SIE_EVALS_DAGSTER_URL", dagster.url)  # the link an alert would carry
        page_text, shot = _check_page(check_url(["quality_scores"], "quality_vs_target", KEY), chromium)
        print(f"page shot after {time.monotonic() - started:.0f}s")
    # the table's rows as the check computed them: the most negative per-query deltas, with query text
    joined = target.merge(now, on="query_id", suffixes=("_t", "_n"))
    joined["delta"] = joined["ndcg_at_10_n"] - joined["ndcg_at_10_t"]
    worst = joined[joined["delta"] < 0].sort_values(["delta", "query_id"]).head(REGRESSED_QUERIES)
    assert len(worst) >= 3, worst
    texts = {str(q["_id"]): q["text"] for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())}
    assert "Queries whose ndcg_at_10 dropped most from the target" in page_text, page_text[:4000]
    for row in worst.itertuples(index=False):
        assert row.query_id in page_text and f"{row.delta:+.4f}" in page_text, (row, page_text[:4000])
        assert " ".join(texts[row.query_id].split())[:40] in page_text, (row.query_id, page_text[:4000])
    assert shot.stat().st_size > 20_000


def _check_page(link: str, chromium: str):
    """Chromium on the check's page at the alert's link, its latest execution's regressed_queries
    opened; the page text and a screenshot."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "quality_vs_target_regressed_queries.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.add_locator_handler(
            page.get_by_text("Join the Dagster community"),
            lambda: page.get_by_role("button", name="Skip").click(),
        )
        page.goto(link, wait_until="networkidle")
        page.get_by_text("This is a blocking asset check").first.wait_for(timeout=60_000)
        # the latest execution's metadata: open the regressed_queries markdown
        row = page.locator("tr").filter(has=page.get_by_text("regressed_queries", exact=True))
        row.get_by_text("Show Markdown").click()
        page.get_by_text("dropped most from the target").first.wait_for(timeout=30_000)
        page.wait_for_load_state("networkidle")
        text = page.text_content("body") or ""
        page.screenshot(path=str(shot), full_page=True, animations="disabled")  # the dialog fully shown
        browser.close()
    return text, shot
