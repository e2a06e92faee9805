"""The MTEB task backend: MTEB's task code and evaluators with this project's engine (through the embedding
cache) as the encoder. Equal to the native path on real data, equal to `mteb.evaluate` with sentence-transformers
on a task type the project never implemented, data from a folder, from the hub cache offline, and bad input."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import find_model_config
from sie_evals.lib.engines.cache import DEFAULT_CHUNK_SIZE
from sie_evals.lib.harness.evaluation import DataOptions, EngineOptions, evaluate_source, load_task
from sie_evals_tests.conftest import DATA, MODEL_ID, SCIFACT
from sie_evals_tests.mteb_reference import sentence_transformer

runner = CliRunner()


def _both(minilm, task, **slice_opts):
    out = {}
    for backend in ("native", "mteb"):
        spec, data = load_task(task, DataOptions(backend=backend, **slice_opts))
        result = evaluate_source(minilm, minilm.resolve_profile("default"), spec, data, "local", EngineOptions())
        out[backend] = (spec, data, result)
    return out


@pytest.mark.parametrize(
    ("task", "opts"),
    [("mteb/STSBenchmark", {"limit_queries": 80}), ("beir/SciFact", {"limit_queries": 20, "corpus_size": 200})],
)
def test_mteb_backend_equals_native_on_slices(minilm, task, opts):
    runs = _both(minilm, task, **opts)
    (nspec, ndata, native), (mspec, mdata, mteb_run) = runs["native"], runs["mteb"]
    assert mspec.backend == "mteb" and nspec.backend == "native"
    assert mteb_run.main_score_name == native.main_score_name
    assert mteb_run.main_score == pytest.approx(native.main_score, abs=1e-6)
    assert mdata.variant == ndata.variant and mdata.counts.get("queries") == ndata.counts.get("queries")
    meta = mteb_run.extra["mteb"]
    assert meta["main_score"] == native.main_score_name and meta["dataset_revision"] and meta["mteb_version"]
    assert mdata.describe()["mteb"]["dataset_path"] == meta["dataset_path"]
    # every metric MTEB returns is reported; the native ones are among them
    assert set(native.metrics) - {"max_ap"} <= set(mteb_run.metrics) | {k for k in native.metrics if "_at_" in k}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "opts"),
    [("mteb/Banking77Classification", {"limit_queries": 300}), ("mteb/TwitterURLCorpus", {"limit_queries": 300})],
)
def test_mteb_backend_equals_native_other_types(minilm, task, opts):
    runs = _both(minilm, task, **opts)
    assert runs["mteb"][2].main_score == pytest.approx(runs["native"][2].main_score, abs=1e-6)


def _clustering_folder(root):
    """TwentyNewsgroupsClustering.v2's hub layout (rows of sentence and label lists) with real Banking77 texts
    of 12 intents; the task's own dataset_transform flattens it, as on the hub."""
    frame = pd.read_csv(DATA / "banking77" / "test.csv")
    intents = sorted(frame["category"].unique())[:12]
    frame = frame[frame["category"].isin(intents)]
    folder = root / "twentynewsgroupsclustering.v2"
    folder.mkdir(parents=True)
    rows = [
        {"sentences": part["text"].tolist(), "labels": part["category"].tolist()}
        for _, part in frame.groupby(frame.index % 2)
    ]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_clustering_runs_end_to_end_and_equals_mteb_evaluate(tmp_path, minilm):
    import mteb
    from datasets import load_dataset

    folder = _clustering_folder(tmp_path / "data")
    spec, data = load_task("mteb/TwentyNewsgroupsClustering.v2", DataOptions(data_root=tmp_path / "data"))
    assert spec.backend == "mteb" and spec.type == "mteb:Clustering"
    ours = evaluate_source(minilm, minilm.resolve_profile("default"), spec, data, "local", EngineOptions())

    task = mteb.get_task("TwentyNewsgroupsClustering.v2")
    task.dataset = load_dataset("json", data_files={"test": str(folder / "test.jsonl")})
    task.dataset_transform()
    task.data_loaded = True
    result = mteb.evaluate(sentence_transformer(minilm), task, cache=None, overwrite_strategy="always")
    reference = result.task_results[0].scores["test"][0]
    assert ours.main_score_name == "v_measure"
    assert ours.main_score == pytest.approx(reference["main_score"], abs=1e-6)
    assert ours.metrics["v_measure_std"] == pytest.approx(reference["v_measure_std"], abs=1e-6)
    assert len(ours.per_query) == len(reference["v_measures"]["Level 0"])  # one row per clustering run


def test_multi_subset_task_names_its_subset(tmp_path, minilm):
    root = tmp_path / "data"
    (root / "stsbenchmarkmultilingualsts").mkdir(parents=True)
    (root / "stsbenchmarkmultilingualsts" / "en").symlink_to(DATA / "stsbenchmark", target_is_directory=True)
    out = tmp_path / "report.json"
    res = runner.invoke(
        app,
        [
            "eval",
            MODEL_ID,
            "-t",
            "mteb/STSBenchmarkMultilingualSTS/en",
            "-s",
            "local",
            "--limit-queries",
            "60",
            "--data-dir",
            str(root),
            "--no-progress",
            "--no-record",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["task"] == "mteb/STSBenchmarkMultilingualSTS/en"
    assert report["dataset"]["mteb"]["subset"] == "en"
    assert report["sources"]["local"]["mteb"]["subset"] == "en"
    assert report["dataset"]["counts"] == {"rows": 60}
    assert "cosine_spearman" in report["sources"]["local"]["metrics"]


def _hub_snapshot(cache, revision, n_queries=10, n_other=40):
    """A hub-cache snapshot of mteb/scifact at `revision` in MTEB's layout (parquet per config, README configs),
    cut from ../shared/data/scifact; and the same data as a BEIR folder."""
    snap = cache / "datasets--mteb--scifact" / "snapshots" / revision
    snap.mkdir(parents=True)
    (cache / "datasets--mteb--scifact" / "refs").mkdir()
    (cache / "datasets--mteb--scifact" / "refs" / "main").write_text(revision)
    header, *rows = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()
    qids = sorted({r.split("\t")[0] for r in rows})[:n_queries]
    kept = [r.split("\t") for r in rows if r.split("\t")[0] in qids]
    judged = {r[1] for r in kept}
    corpus, others = [], 0
    for line in (SCIFACT / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d["_id"] in judged or others < n_other:
            corpus.append({"_id": d["_id"], "title": d["title"], "text": d["text"]})
            others += d["_id"] not in judged
    queries = [
        {"_id": q["_id"], "text": q["text"]}
        for q in map(json.loads, (SCIFACT / "queries.jsonl").read_text().splitlines())
        if q["_id"] in qids
    ]
    qrels = {"query-id": [r[0] for r in kept], "corpus-id": [r[1] for r in kept], "score": [int(r[2]) for r in kept]}
    for rel, df in {
        "corpus/corpus-00000-of-00001.parquet": pd.DataFrame(corpus),
        "queries/queries-00000-of-00001.parquet": pd.DataFrame(queries),
        "qrels/test-00000-of-00001.parquet": pd.DataFrame(qrels),
    }.items():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(snap / rel, index=False)
    configs = {
        "default": ("test", "qrels/test-*"),
        "corpus": ("corpus", "corpus/corpus-*"),
        "queries": ("queries", "queries/queries-*"),
    }
    (snap / "README.md").write_text(
        "---\nconfigs:\n"
        + "".join(
            f"- config_name: {name}\n  data_files:\n  - split: {split}\n    path: {path}.parquet\n"
            for name, (split, path) in configs.items()
        )
        + "---\n"
    )
    beir = cache.parent / "beir" / "scifact"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (beir / "qrels" / "test.tsv").write_text("\n".join([header, *("\t".join(r) for r in kept)]) + "\n")
    return snap, beir.parent


def test_offline_hub_cache_snapshot_is_read_by_datasets(tmp_path, minilm, monkeypatch):
    import mteb

    revision = mteb.get_task("SciFact").metadata.dataset["revision"]
    snap, beir_root = _hub_snapshot(tmp_path / "hub", revision)
    monkeypatch.delenv("SIE_EVALS_DATA_DIR")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    spec, data = load_task("mteb/SciFact", DataOptions(backend="mteb"))
    assert data.origin.startswith(f"hf-cache://mteb/scifact@{revision} (") and str(snap) in data.origin
    assert data.counts == {"corpus": 52, "queries": 10, "qrels": 13}
    ours = evaluate_source(minilm, minilm.resolve_profile("default"), spec, data, "local", EngineOptions())
    nspec, ndata = load_task("beir/SciFact", DataOptions(data_root=beir_root))
    native = evaluate_source(minilm, minilm.resolve_profile("default"), nspec, ndata, "local", EngineOptions())
    assert ours.main_score == pytest.approx(native.main_score, abs=1e-6)
    # the snapshot's absence is a clear exit-2 error naming the folder and the env vars
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    res = runner.invoke(
        app, ["eval", MODEL_ID, "-t", "mteb/SciFact", "--backend", "mteb", "-s", "local", "--no-record"]
    )
    assert res.exit_code == 2
    for needed in (
        "mteb/scifact@" + revision,
        "HF_HUB_OFFLINE=1",
        "<data root>/scifact/",
        "SIE_EVALS_DATA_DIR",
        "HF_HUB_CACHE",
    ):
        assert needed in res.output.replace("\n", ""), needed


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ("mteb/NoSuchTaskAtAll", "unknown MTEB task 'NoSuchTaskAtAll'"),
        ("mteb/STSBenchmarkMultilingualSTS/xx", "has no subset 'xx'; its subsets: en, de"),
        ("mteb/SciFact/en", "has no subset 'en'; its subsets: default"),
    ],
)
def test_bad_mteb_task_names_exit_2(task, expected):
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", task, "-s", "local", "--no-record"])
    assert res.exit_code == 2
    assert expected in res.output.replace("\n", "")


def test_native_backend_refuses_a_task_without_native_path():
    res = runner.invoke(app, ["eval", MODEL_ID, "-t", "mteb/ArguAna", "--backend", "native", "-s", "local"])
    assert res.exit_code == 2 and "no native implementation" in res.output


def test_benchmark_source_reads_a_results_repository(tmp_path, monkeypatch):
    from sie_evals.lib.core.errors import ConfigError
    from sie_evals.lib.gates.benchmark_scores import published_score

    folder = tmp_path / "results-repo" / "results" / "sentence-transformers__all-MiniLM-L6-v2" / "abc123"
    folder.mkdir(parents=True)
    entry = {"hf_subset": "en", "languages": ["eng-Latn"], "main_score": 0.8203, "cosine_spearman": 0.8203}
    other = {**entry, "hf_subset": "de", "main_score": 0.5, "cosine_spearman": 0.5}
    (folder / "STSBenchmarkMultilingualSTS.json").write_text(
        json.dumps({"mteb_version": "1.12.0", "dataset_revision": "29afa25", "scores": {"test": [other, entry]}})
    )
    monkeypatch.setenv("SIE_EVALS_RESULTS_REPO", str(tmp_path / "results-repo"))
    kwargs = {"mteb_name": "STSBenchmarkMultilingualSTS", "model_revision": "abc123"}
    metrics, provenance = published_score(
        MODEL_ID, "mteb/STSBenchmarkMultilingualSTS/en", "test", hf_subset="en", **kwargs
    )
    assert metrics == {"main_score": 0.8203, "cosine_spearman": 0.8203}
    assert provenance["path"].endswith("abc123/STSBenchmarkMultilingualSTS.json") and provenance["subset"] == "en"
    assert published_score(MODEL_ID, "mteb/X/fr", "test", hf_subset="fr", **kwargs) is None  # nothing published
    # the curated file still wins for the tasks it holds
    curated = published_score(MODEL_ID, "beir/SciFact", "test", mteb_name="SciFact")
    assert curated[1]["repository"] == "embeddings-benchmark/results"
    (folder / "STSBenchmarkMultilingualSTS.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"STSBenchmarkMultilingualSTS\.json: not an MTEB result file"):
        published_score(MODEL_ID, "mteb/STSBenchmarkMultilingualSTS/en", "test", hf_subset="en", **kwargs)


def test_mteb_task_snapshots_and_dagster_partitions(tmp_path, minilm):
    """A config may list any MTEB task: its partitions follow, and its data snapshots for the task_dataset asset."""
    from sie_evals.defs.evals.partitions import eval_keys
    from sie_evals.lib.tasks.snapshot import read_snapshot, write_snapshot

    config = minilm.model_copy(update={"tasks": ["mteb/TwentyNewsgroupsClustering.v2", "mteb/SciFact"]})
    assert {str(k) for k in eval_keys([config])} >= {
        f"{minilm.short_name}:mteb/TwentyNewsgroupsClustering.v2:local",
        f"{minilm.short_name}:beir/SciFact:local",
    }
    _clustering_folder(tmp_path / "data")
    for task, opts in (
        ("mteb/TwentyNewsgroupsClustering.v2", {"data_root": tmp_path / "data"}),
        ("mteb/SciFact", {"limit_queries": 5, "corpus_size": 50}),
    ):
        _, data = load_task(task, DataOptions(backend="mteb", **opts))
        back = read_snapshot(write_snapshot(data, tmp_path / "snap" / task.replace("/", "_")))
        assert back.content_hash == data.content_hash and back.counts == data.counts and back.variant == data.variant


def test_tasks_command_lists_every_mteb_text_task():
    import mteb

    res = runner.invoke(app, ["tasks", "--search", "scifact", "--data-dir", str(DATA)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("mteb/SciFact:"))
    assert "Retrieval, main score ndcg_at_10" in line and "[native]" in line and "[local: default]" in line
    res = runner.invoke(app, ["tasks", "--type", "Clustering"])
    names = [x.split(":")[0] for x in res.output.splitlines() if x.startswith("mteb/")]
    assert "mteb/TwentyNewsgroupsClustering.v2" in names and "mteb/SciFact" not in names
    res = runner.invoke(app, ["tasks"])
    listed = {x.split(":")[0] for x in res.output.splitlines() if x.startswith("mteb/")}
    text_tasks = {f"mteb/{t.metadata.name}" for t in mteb.get_tasks() if list(t.metadata.modalities) == ["text"]}
    assert text_tasks <= listed | {"mteb/SciFact"} and len(text_tasks) > 1000
    assert "mteb/STSBenchmarkMultilingualSTS: STS" in res.output and "subsets en,de,es" in res.output


def test_mteb_only_task_materializes_through_the_eval_assets(tmp_path, monkeypatch):
    """The Dagster steps of an MTEB-only task type (clustering): task_dataset snapshots it, embeddings fills the
    cache through MTEB's evaluator, quality_scores re-runs the evaluator on cache hits and equals the CLI path."""
    import dagster as dg

    from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
    from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager

    _clustering_folder(tmp_path / "data")
    # a cache of its own: what this test embeds is a miss, and only that
    settings = EvalSettings(
        data_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache")
    )
    task = "mteb/TwentyNewsgroupsClustering.v2"
    key = f"all-MiniLM-L6-v2:{task}:local"  # the cell's partition: model:task:source
    snap = task_dataset(dg.build_asset_context(partition_key=key), settings=settings).value

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("eval_cells", [key])
    resources = {"settings": settings, "engines": EngineFactory(), "json_io": JsonIOManager(base_dir=str(tmp_path))}
    resources["io_manager"] = resources["json_io"]

    def embed() -> dict:  # a graph asset (shard steps): run as Dagster runs it
        res = dg.materialize([task_dataset, embeddings], partition_key=key, instance=instance, resources=resources)
        return res.output_for_node("embeddings")

    # the task's texts (fewer than a cache chunk's 2048) are one entry: embedded once, then read back
    rows = (tmp_path / "data" / "twentynewsgroupsclustering.v2" / "test.jsonl").read_text().splitlines()
    assert 0 < sum(len(json.loads(r)["sentences"]) for r in rows) < DEFAULT_CHUNK_SIZE
    emb = embed()
    assert emb["cache"] == {"hits": 0, "misses": 1, "corrupt": 0}
    again = embed()
    assert again["cache"] == {"hits": 1, "misses": 0, "corrupt": 0}
    scores = quality_scores(
        dg.build_asset_context(partition_key=key),
        task_dataset=snap,
        embeddings=emb,
        settings=settings,
        engines=EngineFactory(),
    )
    spec, data = load_task(task, DataOptions(data_root=tmp_path / "data"))
    config = find_model_config(MODEL_ID)
    cli = evaluate_source(config, config.resolve_profile("default"), spec, data, "local", EngineOptions())
    assert scores.value["metrics"]["v_measure"] == pytest.approx(cli.metrics["v_measure"], abs=1e-9)
    assert scores.metadata["v_measure"].value == pytest.approx(cli.metrics["v_measure"], abs=1e-9)
