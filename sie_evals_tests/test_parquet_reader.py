"""read_parquet_table: the one rule by which the per-query, ranked-run and saved-result readers turn a
malformed Parquet file into an InputError (exit 2) naming the file and the column."""

import pandas as pd
import pytest

from sie_evals.lib.core.errors import InputError
from sie_evals.lib.core.parquet import read_parquet_table
from sie_evals.lib.harness.diff_sides import read_per_query
from sie_evals.lib.quality.ranking import RUN_SCHEMA, read_run

RUN = pd.DataFrame({"query_id": ["q1", "q1"], "doc_id": ["d1", "d2"], "rank": [1, 2], "score": [0.9, 0.5]})


def test_read_parquet_table_names_the_file_and_the_column(tmp_path):
    good = tmp_path / "run.parquet"
    RUN.to_parquet(good, index=False)
    assert read_parquet_table(good, RUN_SCHEMA, "ranked run").equals(RUN)

    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(InputError) as err:
        read_parquet_table(truncated, RUN_SCHEMA, "ranked run", ". Re-save it")
    assert err.value.exit_code == 2
    text = str(err.value)
    assert text.startswith(f"{truncated}: ranked run: not a readable Parquet file (") and text.endswith(". Re-save it")

    no_doc = tmp_path / "no_doc.parquet"
    RUN.drop(columns="doc_id").to_parquet(no_doc, index=False)
    with pytest.raises(InputError, match="no column 'doc_id' \\(expected query_id, doc_id, rank, score\\)") as err:
        read_parquet_table(no_doc, RUN_SCHEMA, "ranked run")
    assert str(err.value).startswith(f"{no_doc}: ranked run: ")

    text_rank = tmp_path / "text_rank.parquet"
    RUN.astype({"rank": str}).to_parquet(text_rank, index=False)
    with pytest.raises(InputError, match="column 'rank' must hold integers") as err:
        read_parquet_table(text_rank, RUN_SCHEMA, "ranked run")
    assert str(err.value).startswith(f"{text_rank}: ")

    text_score = tmp_path / "text_score.parquet"
    RUN.astype({"score": str}).to_parquet(text_score, index=False)
    with pytest.raises(InputError, match="column 'score' must hold numbers"):
        read_parquet_table(text_score, RUN_SCHEMA, "ranked run")

    # ids come back as text whatever they were written as; a missing file is the caller's to word
    int_ids = tmp_path / "int_ids.parquet"
    RUN.assign(query_id=[7, 7]).to_parquet(int_ids, index=False)
    assert read_parquet_table(int_ids, RUN_SCHEMA, "ranked run")["query_id"].tolist() == ["7", "7"]
    with pytest.raises(FileNotFoundError):
        read_parquet_table(tmp_path / "absent.parquet", RUN_SCHEMA, "ranked run")


def test_the_readers_use_it(tmp_path):
    """read_run and read_per_query check columns and types through the helper and word a missing file."""
    text_rank = tmp_path / "run.parquet"
    RUN.astype({"rank": float}).to_parquet(text_rank, index=False)
    with pytest.raises(InputError, match="column 'rank' must hold integers"):
        read_run(text_rank)
    with pytest.raises(InputError, match="ranked run not found"):
        read_run(tmp_path / "absent.parquet")
    zero_rank = tmp_path / "zero.parquet"
    RUN.assign(rank=[0, 1]).to_parquet(zero_rank, index=False)
    with pytest.raises(InputError, match="must hold integers from 1"):
        read_run(zero_rank)

    no_qid = tmp_path / "per_query.parquet"
    pd.DataFrame({"ndcg_at_10": [0.5]}).to_parquet(no_qid, index=False)
    with pytest.raises(InputError, match="per-query scores: no column 'query_id'") as err:
        read_per_query(no_qid, tmp_path / "report.json")
    assert str(err.value).startswith(f"{no_qid}: ")
    with pytest.raises(InputError, match=r"report\.json names are missing"):
        read_per_query(tmp_path / "absent.parquet", tmp_path / "report.json")
