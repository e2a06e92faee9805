"""Targets nobody can check (issue 22 item 5, N113): `sie-bench validate` rejects a saved metric its task
never produces, in every entry of a model config, naming the file, the field path and the valid metrics.
The vocabulary (lib/gates/target_metrics.py) is held to what the real scorers produce."""

import numpy as np
import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.core.metric_names import MetricKind, metric_kind
from sie_evals.lib.gates.target_metrics import vocabulary
from sie_evals.lib.harness.report import PERF_TABLE_METRICS
from sie_evals.lib.perf.sweep import SLO_METRICS
from sie_evals.lib.quality.metrics import retrieval_scores
from sie_evals.lib.quality.scoring import classification_metrics, score_pair_classification, score_sts
from sie_evals.lib.tasks.registry import PAIR_CLASSIFICATION_RULES, STS_RULES, resolve_task
from sie_evals_tests.conftest import SCIFACT

runner = CliRunner()
CONFIG_NAME = "sentence-transformers__all-MiniLM-L6-v2.yaml"
PERF_VARIANT = "perf@corpus-b1-c16/test/local/amd-epyc-7b13x2"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _validate(configs_dir, monkeypatch) -> tuple[int, str]:
    monkeypatch.setenv("SIE_EVALS_MODEL_CONFIGS_DIR", str(configs_dir))
    res = runner.invoke(app, ["validate"])
    return res.exit_code, _flat(res.output)


def _entry(metrics: dict[str, float]) -> dict:
    return {"source": "local", "saved": "2026-01-01T00:00:00+00:00", "metrics": metrics}


def test_shipped_configs_validate(monkeypatch):
    monkeypatch.delenv("SIE_EVALS_MODEL_CONFIGS_DIR", raising=False)
    res = runner.invoke(app, ["validate"])
    assert res.exit_code == 0, res.output


def test_n113_typo_metric_in_the_full_split_target_is_exit_2(configs_dir, monkeypatch):
    cfg = configs_dir / CONFIG_NAME
    text = cfg.read_text()
    assert "{ndcg_at_10: 0.64508" in text
    cfg.write_text(text.replace("{ndcg_at_10: 0.64508", "{ndcg_at_11: 0.64508"))
    code, out = _validate(configs_dir, monkeypatch)
    assert code == 2, out
    assert f"{cfg}: 1 saved metric(s) that no run produces" in out
    assert "field 'targets[beir/SciFact][default][test].metrics.ndcg_at_11'" in out
    assert "beir/SciFact (retrieval) never produces 'ndcg_at_11'" in out
    assert "valid metrics: ndcg_at_1, ndcg_at_3" in out and "mrr_at_1000" in out
    assert "Traceback" not in out and cfg.read_text().count("ndcg_at_11") == 1  # nothing rewritten


def test_every_entry_is_checked_slices_perf_and_measurements(configs_dir, monkeypatch):
    cfg = configs_dir / CONFIG_NAME
    yaml = YAML()
    tree = yaml.load(cfg.read_text())
    scifact = tree["targets"]["beir/SciFact"]
    scifact["default"]["test@q20-c300"] = _entry({"ndcg_at_10": 0.5, "accuracy": 0.9})  # slice: wrong task type
    scifact["default"][PERF_VARIANT] = _entry({"latency_p99.9_ms": 12.0, "items_per_s": 50.0, "ndcg_at_10": 0.6})
    tree["targets"]["finesse/srs-default"] = {"default": {"probes": _entry({"average_srs": 1.0, "average_rss": 2})}}
    tree["measurements"] = {
        "mteb/STSBenchmark": {"bf16": {"test": [{**_entry({"cosine_spearman": 0.8, "cosine_ap": 0.7}), "id": "m1"}]}}
    }
    with open(cfg, "w") as fh:
        yaml.dump(tree, fh)
    code, out = _validate(configs_dir, monkeypatch)
    assert code == 2, out
    assert f"{cfg}: 4 saved metric(s) that no run produces" in out
    assert "field 'targets[beir/SciFact][default][test@q20-c300].metrics.accuracy'" in out
    assert f"field 'targets[beir/SciFact][default][{PERF_VARIANT}].metrics.ndcg_at_10'" in out
    assert "valid metrics: any latency or throughput metric" in out
    assert "field 'targets[finesse/srs-default][default][probes].metrics.average_rss'" in out
    assert "valid metrics: average_srs, average_pbi" in out
    assert "field 'measurements[mteb/STSBenchmark][bf16][test][0].metrics.cosine_ap'" in out
    # what is produced passes: the slice's ndcg_at_10, the perf p99.9 and throughput, average_srs
    for fine in ("test@q20-c300].metrics.ndcg_at_10'", "latency_p99.9_ms'", "items_per_s'", "average_srs'"):
        assert fine not in out


def test_unregistered_beir_task_accepts_any_k_but_not_other_types(configs_dir, monkeypatch):
    cfg = configs_dir / CONFIG_NAME
    yaml = YAML()
    tree = yaml.load(cfg.read_text())
    tree["targets"]["beir/NQ"] = {"default": {"test": _entry({"ndcg_at_7": 0.5, "cosine_spearman": 0.5})}}
    with open(cfg, "w") as fh:
        yaml.dump(tree, fh)
    code, out = _validate(configs_dir, monkeypatch)
    assert code == 2 and "1 saved metric(s)" in out and "metrics.cosine_spearman'" in out, out


# ---------------------------------------------------------------- the vocabulary is what the scorers produce


def _checkable(metrics: dict[str, float]) -> list[str]:
    return [m for m in metrics if metric_kind(m) is not None]


def test_vocabulary_holds_every_metric_the_retrieval_scorer_produces():
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, rel = line.split("\t")
        qrels.setdefault(q, {})[d] = int(rel)
    run: dict[str, dict[str, float]] = {}
    for line in (SCIFACT / "runs" / "all-MiniLM-L6-v2.test.top100.trec").read_text().splitlines():
        q, _, d, _, score, _ = line.split()
        if q in list(qrels)[:20]:
            run.setdefault(q, {})[d] = float(score)
    spec = resolve_task("beir/SciFact")
    metrics, _ = retrieval_scores(qrels, run, spec.rules.k_values)
    vocab = vocabulary("beir/SciFact", "test")
    produced = _checkable(metrics)
    assert len(produced) == 42 and all(vocab.allows(m) for m in produced)
    assert set(produced) == set(vocab.names)


def test_vocabulary_holds_every_metric_the_other_scorers_produce():
    from sie_evals.lib.tasks.labeled import PairData

    def pairs(gold: list[float]) -> PairData:
        texts = [str(i) for i in range(len(gold))]
        return PairData(task_id="t", split="test", sentence1=texts, sentence2=texts, gold=gold, origin="test")

    rng = np.random.default_rng(0)
    for labels in ([0, 1, 2, 1, 0, 2], [0, 1, 1, 0]):  # multi-class, and binary (adds ap, ap_weighted)
        got = _checkable(classification_metrics(labels, np.asarray(labels[::-1])))
        assert all(vocabulary("mteb/Banking77Classification", "test").allows(m) for m in got), got
    e1, e2 = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    pair, _ = score_pair_classification(pairs([0, 1, 0, 1, 1, 0, 1, 0]), e1, e2)
    assert set(_checkable(pair)) == set(vocabulary("mteb/TwitterURLCorpus", "test").names)
    sts, _ = score_sts(pairs([0.0, 1.0, 2.5, 3.0, 5.0, 4.2, 1.1, 0.3]), e1, e2, STS_RULES)
    assert set(_checkable(sts)) == set(vocabulary("mteb/STSBenchmark", "test").names)
    assert PAIR_CLASSIFICATION_RULES.main_score in vocabulary("mteb/TwitterURLCorpus", "test").names


def test_every_reported_latency_and_slo_metric_can_be_targeted():
    """latency_p99.9_ms is reported and offered as an SLO: it must be a metric a perf target may name."""
    perf = vocabulary("beir/SciFact", PERF_VARIANT)
    for name in (*[m for m in PERF_TABLE_METRICS if m.startswith("latency_")], *SLO_METRICS.values()):
        if name.startswith("latency_"):
            assert metric_kind(name) is MetricKind.latency and perf.allows(name), name
    assert not vocabulary("beir/SciFact", "test").allows("latency_p99.9_ms")


@pytest.mark.parametrize("task", ["finesse/rss-default", "finesse/srs-default"])
def test_finesse_vocabulary_is_its_main_score(task):
    spec = resolve_task(task)
    assert spec.rules.main_score in vocabulary(task, "probes").names
