"""MTEB's data rules on real BEIR data: qrels that name documents missing from the corpus are a warning, and
every metric equals `mteb.evaluate` with sentence-transformers on the same folder."""

import json

import pytest

from sie_evals.lib.harness.evaluation import DataOptions, EngineOptions, evaluate_source, load_task
from sie_evals_tests.conftest import SCIFACT
from sie_evals_tests.mteb_reference import beir_folder_as_mteb_split, mteb_evaluate, sentence_transformer

N_QUERIES, N_OTHER_DOCS, N_REMOVED = 15, 60, 5


def _scifact_copy_missing_docs(root):
    """A SciFact slice (15 test queries, their judged docs and 60 others) whose qrels name 5 judged
    documents that are removed from its corpus."""
    folder = root / "scifact"
    (folder / "qrels").mkdir(parents=True)
    header, *rows = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()
    qids = sorted({r.split("\t")[0] for r in rows})[:N_QUERIES]
    kept = [r for r in rows if r.split("\t")[0] in qids]
    judged = sorted({r.split("\t")[1] for r in kept})
    removed = set(judged[:N_REMOVED])
    (folder / "qrels" / "test.tsv").write_text("\n".join([header, *kept]) + "\n")
    others = 0
    with open(SCIFACT / "corpus.jsonl") as src, open(folder / "corpus.jsonl", "w") as dst:
        for line in src:
            doc_id = json.loads(line)["_id"]
            if doc_id in removed:
                continue
            if doc_id in judged or others < N_OTHER_DOCS:
                dst.write(line)
                others += doc_id not in judged
    with open(SCIFACT / "queries.jsonl") as src, open(folder / "queries.jsonl", "w") as dst:
        dst.writelines(line for line in src if json.loads(line)["_id"] in qids)
    return folder, removed


def test_missing_judged_documents_warn_and_score_like_mteb(tmp_path, minilm, caplog):
    import mteb

    folder, removed = _scifact_copy_missing_docs(tmp_path / "data")
    spec, data = load_task("beir/SciFact", DataOptions(data_root=tmp_path / "data"))
    assert len(data.warnings) == 1
    assert f"{N_REMOVED} judged document(s) are not in the corpus" in data.warnings[0]
    assert all(d in data.warnings[0] for d in sorted(removed))
    ours = evaluate_source(minilm, minilm.resolve_profile("default"), spec, data, "local", EngineOptions())

    task = mteb.get_task("SciFact")
    task.dataset = {"default": {"test": beir_folder_as_mteb_split(folder)}}
    task.data_loaded = True
    reference = mteb_evaluate(task, sentence_transformer(minilm))

    assert ours.main_score == pytest.approx(reference["main_score"], abs=1e-6)
    compared = 0
    for name, value in ours.metrics.items():
        assert name in reference, name
        # pytrec_eval-based means are rounded to 5 digits by both; vectors differ in the last float bits
        assert value == pytest.approx(reference[name], abs=1e-5 if name.startswith("mrr") else 1.1e-5), name
        compared += 1
    assert compared >= 40
    # the missing documents really are judged and never retrieved: recall@1000 is below 1 for their queries
    assert reference["recall_at_1000"] < 1.0
