"""MUVERA as in the paper: FDE search for candidates, the top `rescore_k` rescored with exact MaxSim.

Real model (all-MiniLM-L6-v2's token vectors, profile `muvera`), real SciFact slices; the reference is
exact MaxSim over every (query, document) pair (maxsim_matrix) and a brute-force FDE dot product."""

import io
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.engines.local import LocalEngine
from sie_evals.lib.engines.muvera import postprocess
from sie_evals.lib.engines.serialization import dump_to, load
from sie_evals.lib.engines.vectors import MuveraVectors
from sie_evals.lib.quality.maxsim import maxsim_matrix, maxsim_rescore
from sie_evals.lib.quality.output_search import muvera_top_k, top_k

runner = CliRunner()
SLICE = ["--limit-queries", "20", "--corpus-size", "300"]


@pytest.fixture(scope="module")
def muvera_vectors(minilm, scifact_test):
    """(queries, documents) of a 20-query, 300-document SciFact slice, rescore_k 20."""
    profile = minilm.resolve_profile("muvera")
    profile = profile.model_copy(update={"muvera": profile.muvera.model_copy(update={"rescore_k": 20})})
    sub = scifact_test.take_subset(20, 300)
    engine = LocalEngine(minilm, minilm.resolve_profile("multivector"), threads=2)
    try:
        q = postprocess(profile, True, engine.embed(sub.query_texts, EmbedKind.query))
        d = postprocess(profile, False, engine.embed(sub.corpus_texts, EmbedKind.document))
    finally:
        engine.stop()
    assert isinstance(q, MuveraVectors) and isinstance(d, MuveraVectors)
    return q, d


def _reference(q: MuveraVectors, d: MuveraVectors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: FDE top rescore_k (ties by index), ranked by exact MaxSim (ties by index)."""
    fde = q.fde.astype(np.float64) @ d.fde.astype(np.float64).T
    exact = maxsim_matrix(q.tokens, d.tokens)
    idx, scores = [], []
    for row in range(len(q)):
        cand = np.lexsort((np.arange(len(d)), -fde[row]))[: q.rescore_k]
        ranked = cand[np.lexsort((cand, -exact[row, cand]))][:k]
        idx.append(ranked)
        scores.append(exact[row, ranked])
    return np.array(scores), np.array(idx)


def test_rescored_ranking_is_exact_maxsim_over_the_fde_candidates(muvera_vectors):
    q, d = muvera_vectors
    scores, idx = muvera_top_k(q, d, k=1000)
    ref_scores, ref_idx = _reference(q, d, 1000)
    assert idx.shape == (len(q), 20)  # at most rescore_k ranked per query
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()
    # the dispatcher takes the same pipeline; and rescoring changes what the raw FDE search ranks
    np.testing.assert_array_equal(top_k(q, d, 1000, "dot")[1], idx)
    raw = np.argsort(-(q.fde @ d.fde.T), axis=1, kind="stable")[:, :10]
    assert (raw != idx[:, :10]).any()


def test_maxsim_rescore_equals_the_full_matrix(muvera_vectors):
    q, d = muvera_vectors
    cand = np.tile(np.arange(0, 300, 7), (len(q), 1))
    np.testing.assert_allclose(
        maxsim_rescore(q.tokens, d.tokens, cand), maxsim_matrix(q.tokens, d.tokens)[:, cand[0]], rtol=1e-5, atol=1e-5
    )


def test_muvera_vectors_round_trip_the_file_format(muvera_vectors):
    """What the Dagster embeddings asset writes and quality_scores reads back: FDE, tokens and rescore_k."""
    q, _ = muvera_vectors
    buf = io.BytesIO()
    dump_to(buf, q)
    back = load(buf.getvalue(), rows=len(q))
    assert isinstance(back, MuveraVectors) and back.rescore_k == 20
    np.testing.assert_array_equal(back.fde, q.fde)
    np.testing.assert_array_equal(back.tokens.values, q.tokens.values)
    np.testing.assert_array_equal(back.tokens.offsets, q.tokens.offsets)


def _eval(tmp_path, profile: str, printed: list[str] | None = None) -> dict:
    out = tmp_path / f"{profile}.json"
    res = runner.invoke(
        app,
        ["eval", "all-MiniLM-L6-v2", "-t", "beir/SciFact", "-p", profile, *SLICE, "--threads", "2",
         "--no-progress", "--no-record", "-o", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    if printed is not None:
        printed.append(" ".join(res.output.split()))
    return json.loads(out.read_text())["sources"]["local"]


@pytest.mark.slow
def test_cli_muvera_reports_rescored_headline_raw_metrics_and_recall(tmp_path, configs_dir, monkeypatch):
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    exact = _eval(tmp_path, "multivector")
    printed: list[str] = []
    default = _eval(tmp_path, "muvera", printed)  # rescore_k 100 of 300 documents
    info = default["muvera_rescoring"]
    # the terminal shows the raw FDE's figures and the recall beside the rescored headline
    assert f"raw FDE ndcg_at_10 {info['raw_fde_metrics']['ndcg_at_10']:.5f}" in printed[0], printed[0]
    assert f"top-10 recall in the candidates {info['maxsim_top10_recall_in_candidates']}" in printed[0]
    assert info["rescore_k"] == 100 and info["ranked_per_query"] == 100
    assert 0.5 <= info["maxsim_top10_recall_in_candidates"] <= 1
    raw = info["raw_fde_metrics"]
    assert raw["ndcg_at_10"] != default["metrics"]["ndcg_at_10"]  # the headline is not the raw search
    # every document a candidate: rescoring is exact MaxSim, recall 1, the same metrics as -p multivector
    config = configs_dir / "sentence-transformers__all-MiniLM-L6-v2.yaml"
    text = config.read_text()
    assert "seed: 42}" in text
    config.write_text(text.replace("seed: 42}", "seed: 42, rescore_k: 300}"))
    whole = _eval(tmp_path, "muvera")
    assert whole["muvera_rescoring"]["maxsim_top10_recall_in_candidates"] == 1.0
    assert whole["muvera_rescoring"]["raw_fde_metrics"] == raw  # the same FDE search
    for name in ("ndcg_at_10", "map_at_10", "recall_at_100", "mrr_at_10"):
        assert whole["metrics"][name] == pytest.approx(exact["metrics"][name], abs=1e-9), name
