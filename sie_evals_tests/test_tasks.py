import json

import pytest

from sie_evals.lib.core.errors import DatasetError, UnknownNameError
from sie_evals.lib.tasks import load_retrieval_data, resolve_task
from sie_evals.lib.tasks.retrieval import document_text
from sie_evals.lib.tasks.snapshot import read_snapshot, write_snapshot
from sie_evals_tests.conftest import DATA


def test_scifact_test_split_matches_published_counts(scifact_test):
    # BEIR/MTEB SciFact test: 5,183 docs, 300 queries, 339 qrels.
    assert scifact_test.counts == {"corpus": 5183, "queries": 300, "qrels": 339}
    # MTEB's descriptive stats: total document text 7,771,451 chars, queries 27,104.
    assert sum(len(t) for t in scifact_test.corpus_texts) == 7_771_451
    assert sum(len(t) for t in scifact_test.query_texts) == 27_104
    assert len(scifact_test.content_hash) == 64


def test_aliases_and_case_resolve_to_one_task():
    assert resolve_task("mteb/SciFact").task_id == "beir/SciFact"
    assert resolve_task("BEIR/scifact").task_id == "beir/SciFact"


def test_unknown_task_lists_valid_ones():
    with pytest.raises(UnknownNameError) as err:
        resolve_task("glue/SST2")
    assert "beir/SciFact" in str(err.value)


def test_content_hash_is_stable_and_content_sensitive(scifact_test, beir_root):
    again = load_retrieval_data(resolve_task("beir/SciFact"), "test", DATA)
    assert again.content_hash == scifact_test.content_hash
    a = load_retrieval_data(resolve_task("beir/tinybeir"), "test", beir_root)
    corpus = beir_root / "tinybeir" / "corpus.jsonl"
    corpus.write_text(corpus.read_text().replace("the", "teh", 1))
    b = load_retrieval_data(resolve_task("beir/tinybeir"), "test", beir_root)
    assert a.content_hash != b.content_hash


def test_document_text_is_mteb_rule():
    assert document_text("Title", "Body.") == "Title Body."
    assert document_text("", " Body ") == "Body"
    assert document_text(None, "x") == "x"


def test_unregistered_beir_folder_works(beir_root):
    spec = resolve_task("beir/TinyBEIR")
    assert not spec.registered and spec.local_dir == "tinybeir"
    data = load_retrieval_data(spec, None, beir_root)
    assert data.counts["queries"] == 5 and data.split == "test"


def test_unregistered_name_known_to_mteb_gets_mteb_rules():
    assert resolve_task("beir/ArguAna").rules.ignore_identical_ids is True
    assert resolve_task("beir/MSMARCO").default_split == "dev"
    assert resolve_task("beir/SomethingNew").rules.ignore_identical_ids is False


def test_subset_is_deterministic_and_keeps_relevant_docs(scifact_test):
    a = scifact_test.take_subset(25, 400)
    b = scifact_test.take_subset(25, 400)
    assert a.query_ids == b.query_ids and a.corpus_ids == b.corpus_ids and a.content_hash == b.content_hash
    assert a.counts["queries"] == 25 and a.counts["corpus"] == 400
    docs = set(a.corpus_ids)
    assert all(d in docs for q in a.qrels for d in a.qrels[q])
    assert a.content_hash != scifact_test.content_hash


def test_snapshot_round_trip(tmp_path, scifact_test):
    small = scifact_test.take_subset(10, 100)
    back = read_snapshot(write_snapshot(small, tmp_path / "snap"))
    assert back == small and back.content_hash == small.content_hash


# ---- bad input: each names the file (and line) and is an input error (exit code 2)


def _load(root, split="test"):
    return load_retrieval_data(resolve_task("beir/tinybeir"), split, root)


def test_missing_qrels_file(beir_root):
    (beir_root / "tinybeir" / "qrels" / "test.tsv").unlink()
    with pytest.raises(DatasetError, match=r"qrels/test.tsv: missing qrels file") as err:
        _load(beir_root)
    assert err.value.exit_code == 2


def test_unknown_split_lists_available(beir_root):
    with pytest.raises(DatasetError, match=r"qrels/validation.tsv.*available splits: test"):
        _load(beir_root, "validation")


def test_empty_corpus(beir_root):
    (beir_root / "tinybeir" / "corpus.jsonl").write_text("")
    with pytest.raises(DatasetError, match=r"corpus.jsonl: the corpus is empty"):
        _load(beir_root)


def test_qrels_naming_a_missing_document_is_a_warning_not_an_error(beir_root, caplog):
    # Real BEIR data does this and MTEB tolerates it: the judged doc stays in the qrels (never retrievable).
    qrels = beir_root / "tinybeir" / "qrels" / "test.tsv"
    lines = qrels.read_text().splitlines()
    qid = lines[1].split("\t")[0]
    qrels.write_text("\n".join([*lines, f"{qid}\tNO_SUCH_DOC\t1", "NO_SUCH_QUERY\tNO_SUCH_DOC2\t1"]) + "\n")
    data = _load(beir_root)
    assert data.qrels[qid]["NO_SUCH_DOC"] == 1
    assert "NO_SUCH_QUERY" not in data.query_ids
    assert len(data.warnings) == 2
    assert "2 judged document(s) are not in the corpus (first: NO_SUCH_DOC, NO_SUCH_DOC2)" in data.warnings[0]
    assert "1 judged query id(s) are not in the queries (first: NO_SUCH_QUERY)" in data.warnings[1]
    assert data.describe()["warnings"] == list(data.warnings)
    assert "NO_SUCH_DOC" in caplog.text


def test_malformed_json_line(beir_root):
    corpus = beir_root / "tinybeir" / "corpus.jsonl"
    corpus.write_text(corpus.read_text() + "{not json\n")
    with pytest.raises(DatasetError, match=r"corpus.jsonl:\d+: not valid JSON"):
        _load(beir_root)


def test_missing_field_and_duplicate_id(beir_root):
    queries = beir_root / "tinybeir" / "queries.jsonl"
    first = queries.read_text().splitlines()[0]
    queries.write_text(queries.read_text() + first + "\n")
    with pytest.raises(DatasetError, match=r"queries.jsonl:6: duplicate _id"):
        _load(beir_root)
    queries.write_text(json.dumps({"_id": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"queries.jsonl:1: missing field 'text'"):
        _load(beir_root)


def test_bad_qrels_score(beir_root):
    qrels = beir_root / "tinybeir" / "qrels" / "test.tsv"
    qrels.write_text(qrels.read_text().replace("\t1\n", "\thigh\n", 1))
    with pytest.raises(DatasetError, match=r"test.tsv:2: score 'high' is not an integer"):
        _load(beir_root)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"no dataset folder for task beir/tinybeir"):
        _load(tmp_path)
