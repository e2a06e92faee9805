"""One slicing rule (lib/tasks/slicing.stable_sample) replaced three `_stable_rank`s: every slice must select
exactly the items the old rules selected. The old rules are restated here verbatim as the reference and run on
the real data: Banking77 test rows, TwitterURLCorpus and STS pairs, SciFact queries and documents, and rows by
index (MTEB data)."""

import hashlib

import pytest

from sie_evals.lib.harness.evaluation import load_data
from sie_evals.lib.tasks import resolve_task
from sie_evals.lib.tasks.labeled import row_keys
from sie_evals.lib.tasks.slicing import stable_sample
from sie_evals_tests.conftest import DATA


def _old_row_rank(i: int, text: str) -> str:  # labeled.py and mteb_local.py before
    return hashlib.sha256(f"{i}\x1f{text}".encode()).hexdigest()


def _old_id_rank(item_id: str) -> str:  # retrieval.py before
    return hashlib.sha256(item_id.encode("utf-8")).hexdigest()


def _old_index_rank(i: int) -> str:  # mteb_tasks.py before
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.mark.parametrize("limit", [1, 20, 137, 10**6])
def test_row_slices_equal_the_old_rule_on_real_labeled_data(limit):
    for task, texts in (
        ("mteb/Banking77Classification", lambda d: d.test_texts),
        ("mteb/TwitterURLCorpus", lambda d: d.sentence1),
        ("mteb/STSBenchmark", lambda d: d.sentence1),
    ):
        rows = texts(load_data(resolve_task(task), None, DATA))
        old = sorted(sorted(range(len(rows)), key=lambda i, rows=rows: _old_row_rank(i, rows[i]))[:limit])
        assert stable_sample(row_keys(rows), limit) == old, task
        assert stable_sample([str(i) for i in range(len(rows))], limit) == sorted(
            sorted(range(len(rows)), key=_old_index_rank)[:limit]
        )


@pytest.mark.parametrize(("limit", "corpus_size"), [(20, 300), (5, 1), (300, 1000), (10**6, 10**7)])
def test_retrieval_slice_equals_the_old_rule_on_scifact(scifact_test, limit, corpus_size):
    data = scifact_test
    chosen = set(sorted(data.query_ids, key=_old_id_rank)[:limit])
    relevant = {d for q in chosen for d in data.qrels[q]} & set(data.corpus_ids)
    fill = [d for d in sorted(data.corpus_ids, key=_old_id_rank) if d not in relevant]
    keep_docs = relevant | set(fill[: max(0, corpus_size - len(relevant))])
    part = data.take_subset(limit, corpus_size)
    assert set(part.query_ids) == chosen
    assert part.corpus_ids == [d for d in data.corpus_ids if d in keep_docs]  # file order kept


def test_stable_sample_keeps_order_and_handles_edges():
    keys = ["b", "a", "c", "a"]
    assert stable_sample(keys, 0) == [] and stable_sample(keys, -3) == []
    assert stable_sample(keys, 10) == [0, 1, 2, 3]
    two = stable_sample(keys, 2)
    assert two == sorted(two) and len(two) == 2
