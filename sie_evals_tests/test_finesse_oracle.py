"""sie-evals' Finesse against finesse-benchmark 0.18.9's own outputs (sie_evals_tests/data/finesse_oracle, made by
sie_evals_tests/tools/make_finesse_oracle.py): with `sampler: finesse-0.18.9` the same corpora, config, seed and
(fake, deterministic) models give the identical probe texts, embeddings and scores, for RSS and SRS in merger
and native mode; and the package's legacy .pt files re-score to its own benchmark_results.json."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sie_evals.finesse import hashing as hs
from sie_evals.finesse.config import parse_config
from sie_evals.finesse.io import read_embeddings
from sie_evals.finesse.probes.embedders import MeanMerger
from sie_evals.finesse.probes.generate import generate
from sie_evals.finesse.results import score_embeddings, verify
from sie_evals_tests.conftest import DATA, MODEL_ID
from sie_evals_tests.tools.finesse_fakes import (
    FakeEmbedder,
    SieFakeEmbedder,
    SieFakeMerger,
    build_corpora,
    minilm_tokenizer,
)

ORACLE = Path(__file__).parent / "data" / "finesse_oracle"
RUNS = ["rss_merger", "rss_native", "srs_merger", "srs_native"]  # fake models: everything bit for bit


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpora(DATA, tmp_path_factory.mktemp("finesse-corpus"))["a"].parent


@pytest.fixture(scope="module")
def tokenizer():
    return minilm_tokenizer()


def oracle(name: str) -> tuple[dict, list[list[str]], dict]:
    draws = json.loads((ORACLE / f"{name}.draws.json").read_text())
    results = json.loads((ORACLE / f"{name}.benchmark_results.json").read_text())
    return draws["config"], draws["draws"], results


def our_config(package_cfg: dict, corpus: Path) -> dict:
    """The oracle's 0.18.9 config in sie-evals' schema, with the package's sampler."""
    cfg = json.loads(json.dumps(package_cfg).replace("{corpus}", str(corpus)))
    fake = {"name": "fake-embedder", "max_context_length": cfg["models"].get("native_embedder", {}).get(
        "max_context_length", 512)}  # fmt: skip
    models = (
        {"merger": {"name": "fake-merger"}, "base_embedder": {"name": "fake-embedder"}}
        if cfg["mode"] == "merger_mode"
        else {"native_embedder": fake}
    )
    return {
        "metric": cfg["metric"],
        "sampler": "finesse-0.18.9",
        "formula": cfg["formula"],
        "mode": cfg["mode"],
        "models": models,
        "datasets": [
            {"path": d["path"], "split": d["split"], "data_files": d["data_files"], "text_column": d["text_column"]}
            for d in cfg["datasets"]
        ],
        "probe_config": {**cfg["probe_config"]},
        "seed": cfg["seed"],
    }


def run_ours(name: str, corpus: Path, tokenizer, tmp_path: Path):
    package_cfg, draws, results = oracle(name)
    cfg = parse_config(our_config(package_cfg, corpus), name)
    ctx = cfg.models.native_embedder.max_context_length if cfg.models.native_embedder else 512
    embedder = SieFakeEmbedder(FakeEmbedder(tokenizer, max_length=ctx), ctx)
    merger = SieFakeMerger() if cfg.mode.value == "merger_mode" else None
    path = generate(cfg, tmp_path, embedder=embedder, merger=merger)
    return read_embeddings(path), draws, results


def our_draws(emb) -> list[list[str]]:
    out = []
    for _, run in sorted(emb.lengths.items()):
        if run.skipped:
            continue
        for s in run.samples:
            out.append(s.texts)
            if s.context_texts is not None:
                out.append([t for g in s.context_texts for t in g])
    return out


def same(a, b) -> bool:
    return np.array_equal(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))


@pytest.mark.parametrize("name", RUNS)
def test_sampler_finesse_0189_reproduces_the_package(name, corpus, tokenizer, tmp_path):
    emb, draws, want = run_ours(name, corpus, tokenizer, tmp_path)
    assert our_draws(emb) == draws  # identical probe texts, in the package's draw order
    legacy = read_embeddings(ORACLE / f"{name}.pt")
    assert sorted(emb.lengths) == sorted(legacy.lengths)
    for length, run in legacy.lengths.items():
        ours = emb.lengths[length]
        assert bool(ours.skipped) == bool(run.skipped)
        assert len(ours.samples) == len(run.samples)
        for mine, theirs in zip(ours.samples, run.samples, strict=True):
            if theirs.srs is not None:
                assert sorted(mine.srs) == sorted(theirs.srs)
                for p, e in theirs.srs.items():
                    m = mine.srs[p]
                    assert same(m.probe, e.probe) and same(m.positives, e.positives) and same(m.negatives, e.negatives)
            else:
                assert same(mine.chunks, theirs.chunks) and same(mine.synth, theirs.synth)
    got = score_embeddings(emb)
    assert got["sampler"] == "finesse-0.18.9" and got["metric"] == package_metric(name)
    if got["metric"] == "srs":
        assert got["average_srs"] == want["average_srs"] and got["average_pbi"] == want["average_pbi"]
        for length, entry in want["length_scores"].items():
            assert got["length_scores"][length]["sample_results"] == entry["sample_results"]
    else:
        assert got["average_rss"] == want["average_rss"]
        for length, entry in want["length_scores"].items():
            if not entry["rss_scores"]:  # 0.18.9 lists a skipped length with empty lists; we name it and why
                assert "0.18.9 estimate" in got["skipped_lengths"][length]
                continue
            for key in ("rss_scores", "raw_td", "raw_bu"):
                assert got["length_scores"][length][key] == entry[key]


def package_metric(name: str) -> str:
    return name.split("_")[0]


@pytest.mark.parametrize("name", RUNS)
def test_legacy_pt_rescores_to_the_packages_results(name):
    """The package's .pt through the restricted (weights_only) loader equals its benchmark_results.json to 1e-6."""
    _, _, want = oracle(name)
    got = score_embeddings(read_embeddings(ORACLE / f"{name}.pt"))
    metric = package_metric(name)
    assert got["metadata"] == want["metadata"]
    for key in ("average_srs", "average_pbi") if metric == "srs" else ("average_rss",):
        assert got[key] == pytest.approx(want[key], abs=1e-6)
    for length, entry in want["length_scores"].items():
        if metric == "srs":
            for mine, theirs in zip(
                got["length_scores"][length]["sample_results"], entry["sample_results"], strict=True
            ):
                assert mine.keys() == theirs.keys()
                for p in theirs:
                    assert mine[p] == pytest.approx(theirs[p], abs=1e-6)
        elif entry["rss_scores"]:
            assert got["length_scores"][length]["rss_scores"] == pytest.approx(entry["rss_scores"], abs=1e-6)
        else:
            assert length in got["skipped_lengths"]
    # the package's JSON checks with its legacy hash and verifies against its .pt; an edit is caught
    assert hs.legacy_content_hash({**want, "content_hash": ""}) == want["content_hash"]
    assert verify(want, ORACLE / f"{name}.pt", allow_legacy=True).ok
    key = "average_srs" if metric == "srs" else "average_rss"
    edited = {**want, key: want[key] + 1.0, "content_hash": ""}
    edited["content_hash"] = hs.legacy_content_hash(edited)
    report = verify(edited, ORACLE / f"{name}.pt", allow_legacy=True)
    assert not report.ok and any(key in p for p in report.problems)


def test_legacy_pt_loader_stays_restricted(tmp_path):
    """weights_only: a .pt that pickles an arbitrary object is refused (exit-2 input error), not executed."""
    from sie_evals.lib.core.errors import InputError

    raw = torch.load(ORACLE / "srs_merger.pt", weights_only=False)
    raw["metadata"]["evil"] = Path("/tmp")  # any non-allowlisted class
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    with pytest.raises(InputError, match="weights_only"):
        read_embeddings(bad)


def test_order_invariant_merger_gives_srs_near_zero(corpus, tokenizer, tmp_path):
    """Mean pooling cannot tell AB from BA: positives and negatives are the same vectors, so with q2q2 every SRS
    score is ~0 (float rounding only), as the spec says; with q1q3 a score is Q1 - Q3 of one set, i.e. <= 0."""
    package_cfg, _, _ = oracle("srs_merger")
    data = our_config(package_cfg, corpus)
    embedder = SieFakeEmbedder(FakeEmbedder(tokenizer), 512)

    def scores(formula: str, merger, out: Path) -> tuple[float, list[float]]:
        cfg = parse_config({**data, "formula": formula}, "srs_mean")
        got = score_embeddings(read_embeddings(generate(cfg, out, embedder=embedder, merger=merger)))
        flat = [x for e in got["length_scores"].values() for s in e["sample_results"] for v in s.values() for x in v]
        assert flat
        return got["average_srs"], flat

    average, flat = scores("q2q2", MeanMerger(), tmp_path / "q2q2")
    assert abs(average) < 1e-3 and max(abs(x) for x in flat) < 1e-2
    _, flat = scores("q1q3", MeanMerger(), tmp_path / "q1q3")
    assert max(flat) < 1e-2
    # the order-sensitive fake merger on the same probes does separate AB from BA
    average, _ = scores("q2q2", SieFakeMerger(), tmp_path / "ordered")
    assert average > 1.0


def _hf_layout(root: Path, column: str = "text") -> list[Path]:
    """A local copy of a Hugging Face dataset repo layout (CulturaX-like shards) written from real SciFact text."""
    import pandas as pd

    rows = [json.loads(x) for x in (DATA / "scifact" / "corpus.jsonl").read_text().splitlines()[:90]]
    shards = {"en/en_part_00000.parquet": rows[:40], "la/la_part_00000.parquet": rows[40:65],
              "la/la_part_00001.parquet": rows[65:90]}  # fmt: skip
    paths = []
    for rel, part in shards.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"string_id": [r["_id"] for r in part], column: [r["text"] for r in part]}).to_parquet(path)
        paths.append(path)
    (root / "README.md").write_text("not data\n")
    return paths


LEADERBOARD_LIKE = [
    {"path": "uonlp/CulturaX", "split": "train", "data_files": "en/en_part_0000*.parquet", "commit_hash": "abc",
     "text_column": "text"},
    {"path": "uonlp/CulturaX", "split": "train", "data_dir": "la", "commit_hash": "abc", "text_column": "text"},
]  # fmt: skip


def test_dataset_path_reads_a_local_copy_of_the_hub_layout(tokenizer, tmp_path):
    """--dataset-path <folder>: the config's data_files wildcards / data_dir resolve inside the folder and give the
    same rows, in the same order, as Hugging Face `datasets` reading those parquet files (so the same draws)."""
    from sie_evals.finesse.probes.sampling import local_dataset_copy

    shards = _hf_layout(tmp_path / "CulturaX")
    local = local_dataset_copy([parse_config(_srs_cfg(LEADERBOARD_LIKE), "x").datasets[i] for i in (0, 1)],
                               tmp_path / "CulturaX", None)  # fmt: skip
    assert [d["local_files"] for d in local] == [[str(shards[0])], [str(shards[1]), str(shards[2])]]
    via_hf = [{"path": "parquet", "split": "train", "data_files": [str(p) for p in ps], "text_column": "text"}
              for ps in ([shards[0]], shards[1:])]  # fmt: skip
    embedder = SieFakeEmbedder(FakeEmbedder(tokenizer), 512)
    a = read_embeddings(generate(parse_config(_srs_cfg(local), "a"), tmp_path / "a", embedder=embedder))
    b = read_embeddings(generate(parse_config(_srs_cfg(via_hf), "b"), tmp_path / "b", embedder=embedder))
    assert our_draws(a) == our_draws(b) and our_draws(a)
    ids = {i.split("/")[0] for run in a.lengths.values() for s in run.samples for i in s.doc_ids}
    assert ids == {"0", "1"}  # both datasets drawn from; ids come from the string_id column


def _srs_cfg(datasets: list[dict]) -> dict:
    return {
        "metric": "srs",
        "sampler": "finesse-0.18.9",
        "mode": "native_mode",
        "models": {"native_embedder": {"name": "fake", "max_context_length": 512}},
        "datasets": datasets,
        "probe_config": {"sequence_length": {"min": 4, "max": 4}, "samples_per_length": 2, "token_per_sample": 16,
                         "group_amount": 2},
    }  # fmt: skip


def test_default_sampler_srs_skips_lengths_over_the_context(tokenizer, tmp_path):
    """sie-evals sampler, native SRS: a length whose crafted sequences exceed the context is listed as skipped
    (with the reason), never truncated; the other lengths are scored."""
    data = {**_srs_cfg([{"local_files": [str(DATA / "scifact" / "corpus.jsonl")]}]), "sampler": "sie-evals"}
    data["probe_config"] = {**data["probe_config"], "sequence_length": {"min": 4, "max": 5},
                            "reference_tokenizer": str(Path(tokenizer.name_or_path))}  # fmt: skip
    cfg = parse_config(data, "srs")
    embedder = SieFakeEmbedder(FakeEmbedder(tokenizer), 100)  # these 4-chunk sequences are <= 82 tokens, 5-chunk 114
    got = score_embeddings(read_embeddings(generate(cfg, tmp_path, embedder=embedder)))
    assert got["sampler"] == "sie-evals" and list(got["skipped_lengths"]) == ["5"] and not got["complete"]
    assert "max_context_length 100" in got["skipped_lengths"]["5"]
    assert len(got["length_scores"]["4"]["sample_results"]) == 2


def test_sampler_finesse_0189_with_the_real_model_matches_the_package(corpus, tmp_path):
    """all-MiniLM-L6-v2 through sie-evals' own engine vs the package's HuggingFaceEmbedder on the same weights:
    the model's tokenizer selects and cuts the same chunk texts; embeddings and scores agree to float32
    rounding (two implementations of the same mean-pooled forward pass)."""
    package_cfg, draws, want = oracle("rss_native_minilm")
    data = our_config(package_cfg, corpus)
    data["models"]["native_embedder"] = {"name": MODEL_ID, "max_context_length": 256, "pool_type": "mean",
                                         "prefix": ""}  # fmt: skip
    data["advanced"] = {"threads": 1}
    emb = read_embeddings(generate(parse_config(data, "minilm"), tmp_path))
    assert our_draws(emb) == draws
    legacy = read_embeddings(ORACLE / "rss_native_minilm.pt")
    for length, run in legacy.lengths.items():
        for mine, theirs in zip(emb.lengths[length].samples, run.samples, strict=True):
            np.testing.assert_allclose(mine.chunks, theirs.chunks.numpy(), atol=2e-5)
            np.testing.assert_allclose(mine.synth, theirs.synth.numpy(), atol=2e-5)
    got = score_embeddings(emb)
    assert got["average_rss"] == pytest.approx(want["average_rss"], abs=1e-3)  # spec §6's RSS tolerance
