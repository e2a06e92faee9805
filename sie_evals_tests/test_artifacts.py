"""Artifacts on storage every worker shares (issue 24 item 1, lib/core/artifacts.py): the store on a local folder
(used in place) and on s3:// served by moto's ThreadedMotoServer on 127.0.0.1 (real S3 and GCS are not reachable
from here: moto's S3 API is the closest that runs), the embedding cache's shared tier, and a real Dagster cell
whose later steps run as a second worker with empty local dirs."""

import os
import shutil
import socket
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
from sie_evals.defs.evals.checks import EVAL_CHECKS
from sie_evals.defs.evals.partitions import sync_partitions
from sie_evals.defs.evals.resources import EngineFactory, EvalSettings, JsonIOManager
from sie_evals.lib.core.artifacts import MANIFEST, ArtifactStore, open_store
from sie_evals.lib.core.errors import EngineError, InputError
from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.engines.cache import CacheStats, EmbeddingCache
from sie_evals_tests.conftest import skip_unless_required

BUCKET = "sie-artifacts"
CELL = "all-MiniLM-L6-v2:beir/SciFact:local"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """An S3-compatible server on 127.0.0.1 for this module, with one bucket. Missing moto or s3fs: a skip
    locally, a failure under CI (conftest's rule for required tools)."""
    try:
        import s3fs  # noqa: F401  (the s3:// backend fsspec loads)
        from moto.server import ThreadedMotoServer
    except ImportError as err:
        skip_unless_required(f"moto[server] and s3fs are needed for the s3:// tests ({err}): pip install -e '.[test]'")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    import fsspec

    fsspec.filesystem("s3", endpoint_url=endpoint).mkdir(BUCKET)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def s3_store(endpoint: str, prefix: str, local_cache: Path) -> ArtifactStore:
    return ArtifactStore(f"s3://{BUCKET}/{prefix}", local_cache, {"endpoint_url": endpoint})


# -- the store on a local folder: in place, nothing copied ----------------------------------------------------


def test_local_root_is_used_in_place(tmp_path):
    store = ArtifactStore(tmp_path / "results", tmp_path / "cache")
    assert not store.remote
    path = store.local_path("quality_scores/cell.parquet")
    assert path == (tmp_path / "results" / "quality_scores" / "cell.parquet").resolve()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"table")
    ref = store.publish("quality_scores/cell.parquet")
    assert ref == str(path) and store.fetch_file(ref) == path  # the path itself: no copy
    folder = store.local_path("datasets/t/test/abc")
    folder.mkdir(parents=True)
    (folder / "queries.parquet").write_bytes(b"q")
    assert store.fetch_dir(store.publish("datasets/t/test/abc")) == folder
    assert not (tmp_path / "cache").exists()  # nothing staged, nothing downloaded
    store.write_bytes("dagster/x/p.json", b"{}")
    assert store.read_bytes("dagster/x/p.json") == b"{}" and store.read_bytes("dagster/none.json") is None
    with pytest.raises(InputError, match="artifact missing"):
        store.fetch_file(str(tmp_path / "results" / "gone.parquet"))
    assert store.find_file(str(tmp_path / "results" / "gone.parquet")) is None
    with pytest.raises(ValueError, match=r"'\.\.'"):
        store.local_path("../outside")


def test_default_root_is_the_results_dir_and_the_url_comes_from_env(tmp_path, monkeypatch):
    monkeypatch.delenv("SIE_EVALS_ARTIFACTS_URL", raising=False)
    assert open_store(None, None, tmp_path / "results", tmp_path / "c").url == str((tmp_path / "results").resolve())
    monkeypatch.setenv("SIE_EVALS_ARTIFACTS_URL", "s3://bucket/prefix")
    monkeypatch.setenv("SIE_EVALS_ARTIFACTS_OPTIONS", '{"endpoint_url": "http://127.0.0.1:1"}')
    store = open_store(None, None, tmp_path / "results", tmp_path / "c")
    assert (
        store.remote and store.url == "s3://bucket/prefix" and store.options == {"endpoint_url": "http://127.0.0.1:1"}
    )
    monkeypatch.setenv("SIE_EVALS_ARTIFACTS_OPTIONS", "[1]")
    with pytest.raises(InputError, match="SIE_EVALS_ARTIFACTS_OPTIONS: must be a JSON object"):
        open_store(None, None, tmp_path / "results", tmp_path / "c")


# -- the store on s3:// -----------------------------------------------------------------------------------------


def test_s3_file_is_published_and_fetched_once_by_another_worker(s3_endpoint, tmp_path):
    writer = s3_store(s3_endpoint, "unit-file", tmp_path / "worker-a")
    reader = s3_store(s3_endpoint, "unit-file", tmp_path / "worker-b")
    staged = writer.local_path("vectors/document.npy")
    assert staged.is_relative_to(tmp_path / "worker-a")  # staged in the writer's local cache
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"v1" * 1000)
    ref = writer.publish("vectors/document.npy")
    assert ref == f"s3://{BUCKET}/unit-file/vectors/document.npy"

    got = reader.fetch_file(ref)
    assert got.is_relative_to(tmp_path / "worker-b") and got.read_bytes() == b"v1" * 1000
    inode = got.stat().st_ino
    assert reader.fetch_file(ref).stat().st_ino == inode  # same version: not downloaded again
    assert writer.fetch_file(ref) == staged  # the writer's staged copy is current: no download either

    staged.write_bytes(b"v2" * 1000)  # a new version under the same key (a rematerialization)
    writer.publish("vectors/document.npy")
    assert reader.fetch_file(ref).read_bytes() == b"v2" * 1000

    with pytest.raises(InputError, match=rf"s3://{BUCKET}/unit-file/vectors/missing.npy: artifact missing"):
        reader.fetch_file(f"s3://{BUCKET}/unit-file/vectors/missing.npy")
    assert reader.find_file(f"s3://{BUCKET}/unit-file/vectors/missing.npy") is None


def test_s3_folder_is_verified_against_its_manifest(s3_endpoint, tmp_path):
    writer = s3_store(s3_endpoint, "unit-dir", tmp_path / "a")
    folder = writer.local_path("datasets/scifact/test/0123")
    (folder / "sub").mkdir(parents=True)
    (folder / "corpus.parquet").write_bytes(os.urandom(5000))
    (folder / "sub" / "qrels.parquet").write_bytes(b"qrels")
    (folder / ".corpus.parquet.x.tmp").write_bytes(b"a temp file of an interrupted write")
    ref = writer.publish("datasets/scifact/test/0123")

    got = s3_store(s3_endpoint, "unit-dir", tmp_path / "b").fetch_dir(ref)
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == [
        MANIFEST,
        "corpus.parquet",
        "sub/qrels.parquet",
    ]
    assert (got / "corpus.parquet").read_bytes() == (folder / "corpus.parquet").read_bytes()

    # same size, other bytes on the store: the download fails its sha256 and nothing is renamed into place
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    fs.pipe_file(f"{BUCKET}/unit-dir/datasets/scifact/test/0123/sub/qrels.parquet", b"QRELS")
    fresh = s3_store(s3_endpoint, "unit-dir", tmp_path / "c")
    with pytest.raises(EngineError, match=r"sub/qrels.parquet: downloaded file does not match its manifest"):
        fresh.fetch_dir(ref)
    assert not fresh.local_path("datasets/scifact/test/0123").exists()

    # a folder whose manifest was never written (a publish that died midway) is not read
    fs.rm(f"{BUCKET}/unit-dir/datasets/scifact/test/0123/{MANIFEST}")
    with pytest.raises(InputError, match=r"artifact folder missing or incomplete"):
        fresh.fetch_dir(ref)


def test_unreachable_store_is_an_engine_error_without_credentials(tmp_path):
    store = ArtifactStore(
        "s3://AKIAUSER:topsecret@bucket/p", tmp_path, {"endpoint_url": f"http://127.0.0.1:{_free_port()}"}
    )
    assert "topsecret" not in store.url and "topsecret" not in store.ref("k")
    with pytest.raises(EngineError, match=r"artifact store: cannot read s3://\*\*\*@bucket/p/k") as err:
        store.read_bytes("k")
    assert "topsecret" not in str(err.value)


# -- the embedding cache's shared tier ---------------------------------------------------------------------------


def test_embedding_cache_second_worker_hits_the_shared_tier(s3_endpoint, tmp_path, local_engine):
    shared = s3_store(s3_endpoint, "cache-tier", tmp_path / "unused").child("cache")
    texts = [f"shared cache sentence {i}" for i in range(10)]
    a = EmbeddingCache(tmp_path / "worker-a", chunk_size=4, remote=shared)
    first = a.embed(local_engine, texts, EmbedKind.document, sa := CacheStats())
    assert (sa.hits, sa.misses) == (0, 3)
    b = EmbeddingCache(tmp_path / "worker-b", chunk_size=4, remote=shared)  # an empty local disk
    second = b.embed(local_engine, texts, EmbedKind.document, sb := CacheStats())
    assert (sb.hits, sb.misses) == (3, 0)
    np.testing.assert_array_equal(first, second)
    assert len(list((tmp_path / "worker-b" / "embeddings").rglob("*.npy"))) == 3  # copied down: next time local
    alone = EmbeddingCache(tmp_path / "worker-c", chunk_size=4)  # no shared tier: a miss, as before
    alone.embed(local_engine, texts, EmbedKind.document, sc := CacheStats())
    assert sc.misses == 3


# -- a real Dagster cell, its later steps on a second worker ---------------------------------------------------


def _resources(endpoint: str, worker: Path) -> dict:
    options = {"endpoint_url": endpoint}
    return {
        "settings": EvalSettings(
            results_dir=str(worker / "results"),
            cache_dir=str(worker / "cache"),
            limit_queries=20,
            corpus_size=300,
            artifacts_url=f"s3://{BUCKET}/dagster-cell",
            artifacts_options=options,
        ),
        "engines": EngineFactory(),
        "json_io": JsonIOManager(base_dir=f"s3://{BUCKET}/dagster-cell/dagster", artifacts_options=options),
        "io_manager": JsonIOManager(base_dir=f"s3://{BUCKET}/dagster-cell/dagster", artifacts_options=options),
    }


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.slow
def test_cell_on_s3_later_steps_on_a_worker_with_empty_disks(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_CACHE_DIR", str(tmp_path / "env-cache"))  # not the session cache: start cold
    instance = dg.DagsterInstance.ephemeral()  # Dagster's own storage (Postgres in a deployment)
    sync_partitions(instance)
    assets = [task_dataset, embeddings, quality_scores]
    a = tmp_path / "worker-a"
    first = dg.materialize(assets, partition_key=CELL, instance=instance, resources=_resources(s3_endpoint, a))
    assert first.success
    scores_a = first.output_for_node("quality_scores")
    assert scores_a["per_query_path"].startswith(f"s3://{BUCKET}/dagster-cell/quality_scores/")
    assert first.output_for_node("embeddings")["cache"]["misses"] > 0
    # worker A's disks go away: everything a later step needs must be on the store
    shutil.rmtree(a)
    shutil.rmtree(tmp_path / "env-cache", ignore_errors=True)

    b = tmp_path / "worker-b"
    rescored = dg.materialize(
        [*assets, *EVAL_CHECKS],
        selection=dg.AssetSelection.assets(quality_scores) | dg.AssetSelection.checks_for_assets(quality_scores),
        partition_key=CELL,
        instance=instance,
        resources=_resources(s3_endpoint, b),
    )
    assert rescored.success
    assert rescored.output_for_node("quality_scores")["metrics"] == scores_a["metrics"]
    checks = rescored.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)

    # worker B re-embeds the cell: every chunk is a hit on the shared cache tier, vectors equal
    again = dg.materialize(
        assets,
        selection=[embeddings, quality_scores],
        partition_key=CELL,
        instance=instance,
        resources=_resources(s3_endpoint, b),
    )
    assert again.success
    cache = again.output_for_node("embeddings")["cache"]
    assert cache["misses"] == 0 and cache["hits"] > 0, cache
    assert again.output_for_node("quality_scores")["metrics"] == scores_a["metrics"]
    assert _files(b / "results") == []  # worker B wrote nothing a later step needs to its results dir
    assert not (a).exists()


def test_json_io_manager_on_s3_round_trips_and_names_a_bad_output(s3_endpoint, tmp_path):
    io = JsonIOManager(base_dir=f"s3://{BUCKET}/io-unit", artifacts_options={"endpoint_url": s3_endpoint})
    key = dg.AssetKey("task_dataset")
    io.handle_output(dg.build_output_context(asset_key=key), {"snapshot_dir": "s3://b/x", "n": 1})
    assert io.load_input(dg.build_input_context(asset_key=key)) == {"snapshot_dir": "s3://b/x", "n": 1}
    import fsspec

    fsspec.filesystem("s3", endpoint_url=s3_endpoint).pipe_file(f"{BUCKET}/io-unit/task_dataset/all.json", b"{not")
    with pytest.raises(InputError, match=rf"s3://{BUCKET}/io-unit/task_dataset/all.json: upstream output is not valid"):
        io.load_input(dg.build_input_context(asset_key=key))
    with pytest.raises(FileNotFoundError, match=rf"s3://{BUCKET}/io-unit/embeddings/all.json: upstream output missing"):
        io.load_input(dg.build_input_context(asset_key=dg.AssetKey("embeddings")))


def test_deployment_env_puts_outputs_and_cache_tier_on_the_store(s3_endpoint, tmp_path, monkeypatch):
    """The code location's resources as definitions.py builds them, configured by env only."""
    monkeypatch.setenv("SIE_EVALS_ARTIFACTS_URL", f"s3://{BUCKET}/from-env")
    monkeypatch.setenv("SIE_EVALS_ARTIFACTS_OPTIONS", f'{{"endpoint_url": "{s3_endpoint}"}}')
    JsonIOManager().handle_output(dg.build_output_context(asset_key=dg.AssetKey("eval_report")), {"ok": True})
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    assert fs.cat_file(f"{BUCKET}/from-env/dagster/eval_report/all.json") == b'{\n  "ok": true\n}\n'
    settings = EvalSettings.from_env()
    assert settings.artifacts().ref("datasets/x") == f"s3://{BUCKET}/from-env/datasets/x"
    assert settings.cache().remote is not None and settings.cache().remote.url == f"s3://{BUCKET}/from-env/cache"
    monkeypatch.delenv("SIE_EVALS_ARTIFACTS_URL")
    assert EvalSettings(results_dir=str(tmp_path)).cache().remote is None  # one machine: no second tier


def test_s3_folder_fetched_concurrently_and_refreshed_when_republished(s3_endpoint, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    writer = s3_store(s3_endpoint, "unit-dir2", tmp_path / "a")
    folder = writer.local_path("snap")
    folder.mkdir(parents=True)
    (folder / "t.parquet").write_bytes(b"v1" * 3000)
    ref = writer.publish("snap")
    reader = s3_store(s3_endpoint, "unit-dir2", tmp_path / "b")
    with ThreadPoolExecutor(6) as pool:  # steps of one worker fetching the same snapshot at once
        got = list(pool.map(lambda _: reader.fetch_dir(ref), range(6)))
    assert len(set(got)) == 1 and (got[0] / "t.parquet").read_bytes() == b"v1" * 3000
    assert not [p for p in got[0].parent.iterdir() if p.name.startswith(".")]  # no temp or set-aside folder left
    (folder / "t.parquet").write_bytes(b"v2" * 3000)  # the same key republished with other content
    writer.publish("snap")
    assert (reader.fetch_dir(ref) / "t.parquet").read_bytes() == b"v2" * 3000


def test_credentials_in_resource_config_are_a_config_error_naming_the_field(tmp_path):
    from sie_evals.lib.core.errors import ConfigError

    nested = {"endpoint_url": "http://127.0.0.1:9", "client_kwargs": {"aws_secret_access_key": "hunter2-secret"}}
    with pytest.raises(ConfigError, match=r"artifacts_options\.client_kwargs\.aws_secret_access_key: credentials") as e:
        EvalSettings(results_dir=str(tmp_path), artifacts_url="s3://b/p", artifacts_options=nested).artifacts()
    assert "hunter2" not in str(e.value)
    with pytest.raises(ConfigError, match=r"artifacts_options\.secret: credentials"):
        JsonIOManager(base_dir="s3://b/p", artifacts_options={"secret": "x"})._store()
    settings = EvalSettings(results_dir=str(tmp_path), artifacts_url="gs://b/p", artifacts_options={"token": "anon"})
    assert settings.artifacts().options == {"token": "anon"}  # a token *mode* is no secret
