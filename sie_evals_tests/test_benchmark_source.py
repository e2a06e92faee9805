import pytest

from sie_evals.lib.gates.benchmark_scores import load_published_scores, published_score
from sie_evals.lib.tasks import resolve_task
from sie_evals_tests.conftest import SHARED


def test_published_file_validates_and_has_provenance():
    book = load_published_scores()
    assert book.results_repository == "embeddings-benchmark/results" and len(book.results_commit) == 40
    for s in book.scores:
        assert s.path.startswith("results/") and len(s.last_commit) == 40 and s.metrics


def test_every_value_in_the_reference_notes_is_shipped():
    """Each number in shared/reference/published-scores.md's retrieval table is in the data file."""
    text = (SHARED / "reference" / "published-scores.md").read_text()
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| ") and ("SciFact" in line or "NFCorpus" in line) and line.count("|") == 12
    ]
    columns = [
        "ndcg_at_10",
        "map_at_10",
        "recall_at_10",
        "mrr_at_10",
        "ndcg_at_1",
        "ndcg_at_100",
        "map_at_100",
        "recall_at_100",
        "precision_at_10",
    ]
    assert len(rows) == 6
    for row in rows:
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        model, task, values = cells[0], cells[1], cells[2:]
        metrics, provenance = published_score(model, resolve_task(f"beir/{task}").task_id, "test")
        assert provenance["mteb_version"]
        for name, value in zip(columns, values, strict=True):
            assert metrics[name] == float(value), (model, task, name)


def test_unknown_combination_is_none():
    assert published_score("org/none", "beir/SciFact", "test") is None
    assert published_score("sentence-transformers/all-MiniLM-L6-v2", "beir/SciFact", "train") is None


def test_lookup_is_by_canonical_task_id():
    assert published_score("BAAI/bge-m3", resolve_task("mteb/NFCorpus").task_id, "test")[0][
        "ndcg_at_10"
    ] == pytest.approx(0.31411)
