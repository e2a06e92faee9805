"""Classification, pair classification and STS: loaders, MTEB protocol and metric functions checked
against scikit-learn / scipy / MTEB's own code on real data."""

import json

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score
from typer.testing import CliRunner

from sie_evals.cli import app
from sie_evals.lib.core.errors import DatasetError
from sie_evals.lib.engines import EmbedKind
from sie_evals.lib.harness.evaluation import load_data
from sie_evals.lib.quality.scoring import _best_accuracy, _best_f1, classification_metrics, undersample_indices
from sie_evals.lib.quality.task_types import score_task, task_inputs
from sie_evals.lib.tasks import resolve_task
from sie_evals_tests.conftest import DATA, MODEL_ID

B77, TWITTER, STS = "mteb/Banking77Classification", "mteb/TwitterURLCorpus", "mteb/STSBenchmark"


def _load(task, root=DATA, split="test"):
    spec = resolve_task(task)
    return spec, load_data(spec, split, root)


def test_real_data_counts():
    _, b77 = _load(B77)
    assert b77.counts == {"train": 10003, "test": 3080, "labels": 77}
    assert sum(len(t) for t in b77.test_texts) == 167_036  # MTEB's descriptive stats
    _, tw = _load(TWITTER)
    assert len(tw.gold) == 51_534 and sum(tw.gold) == 12_988
    _, sts = _load(STS)
    assert len(sts.gold) == 1379 and sum(len(s) for s in sts.sentence1) == 74_107
    assert np.mean(sts.gold) == pytest.approx(2.607916606236405)


def test_undersampling_equals_mtebs():
    # imported, not importorskip'd: if mteb moves the class, this test must fail, not vanish
    import datasets
    from mteb.abstasks.classification import AbsTaskClassification

    spec, b77 = _load(B77)
    ours = undersample_indices(b77.train_labels, spec.rules)
    task = AbsTaskClassification.__new__(AbsTaskClassification)
    task.seed, task.samples_per_label, task.label_column_name = 42, 8, "label"
    ds = datasets.Dataset.from_dict({"text": b77.train_texts, "label": b77.train_labels})
    idxs = None
    for exp in range(10):
        _, idxs, selected = task._undersample_data(ds, exp, idxs)
        assert selected == ours[exp]
    assert all(len(e) == 77 * 8 for e in ours)
    inputs = task_inputs(spec, b77)[EmbedKind.query]
    assert len(inputs) < 10003  # only the sampled training texts are embedded


def test_classification_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    _, b77 = _load(B77)
    y_true = b77.test_labels
    y_pred = np.where(rng.random(len(y_true)) < 0.8, y_true, rng.integers(0, 77, len(y_true)))
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == accuracy_score(y_true, y_pred)
    assert m["f1"] == f1_score(y_true, y_pred, average="macro")
    assert m["f1_weighted"] == f1_score(y_true, y_pred, average="weighted")
    assert m["precision"] == precision_score(y_true, y_pred, average="macro")
    assert m["recall"] == recall_score(y_true, y_pred, average="macro")
    assert "ap" not in m
    binary = classification_metrics([0, 1, 1, 0], np.array([0, 1, 0, 0]))
    assert binary["ap"] == average_precision_score([0, 1, 1, 0], [0, 1, 0, 0])


@pytest.fixture(scope="module")
def twitter_slice_vectors(local_engine):
    spec, tw = _load(TWITTER)
    tw = tw.take_subset(600)
    texts = task_inputs(spec, tw)[EmbedKind.query]
    return spec, tw, local_engine.embed(texts, EmbedKind.query)


def test_pair_threshold_search_equals_brute_force_and_mteb(twitter_slice_vectors):
    spec, tw, vectors = twitter_slice_vectors
    lookup = dict(zip(task_inputs(spec, tw)[EmbedKind.query], vectors, strict=True))
    e1 = np.stack([lookup[t] for t in tw.sentence1])
    e2 = np.stack([lookup[t] for t in tw.sentence2])
    labels = np.asarray(tw.gold, dtype=np.int64)
    cos = ((e1 / np.linalg.norm(e1, axis=1, keepdims=True)) * (e2 / np.linalg.norm(e2, axis=1, keepdims=True))).sum(1)
    acc, _ = _best_accuracy(cos.tolist(), labels, True)
    f1, p, r, _ = _best_f1(cos.tolist(), labels, True)
    # brute force over every cut between distinct scores
    s = np.unique(cos)
    cuts = (s[:-1] + s[1:]) / 2
    accs = [accuracy_score(labels, cos > c) for c in cuts]
    f1s = [f1_score(labels, cos > c) for c in cuts]
    assert acc == pytest.approx(max(accs), abs=1e-12)
    assert f1 == pytest.approx(max(f1s), abs=1e-12)
    best = int(np.argmax(f1s))
    assert p == pytest.approx(precision_score(labels, cos > cuts[best]))
    assert r == pytest.approx(recall_score(labels, cos > cuts[best]))

    metrics, frame = score_task(spec, tw, {EmbedKind.query: vectors})
    assert metrics["cosine_ap"] == pytest.approx(average_precision_score(labels, frame["cosine"]), abs=1e-12)
    assert metrics["max_ap"] == max(
        metrics[f"{n}_ap"] for n in ("similarity", "cosine", "dot", "euclidean", "manhattan")
    )
    from mteb.abstasks.pair_classification import AbsTaskPairClassification  # a move fails the test

    task = AbsTaskPairClassification.__new__(AbsTaskPairClassification)
    ref = task._compute_metrics_values(frame["cosine"].tolist(), labels, True)
    for k in ("accuracy", "f1", "precision", "recall", "ap"):
        assert metrics[f"cosine_{k}"] == pytest.approx(ref[k], abs=1e-12), k


def test_sts_correlations_equal_scipy(local_engine):
    spec, sts = _load(STS)
    sts = sts.take_subset(300)
    texts = task_inputs(spec, sts)[EmbedKind.query]
    vectors = local_engine.embed(texts, EmbedKind.query)
    metrics, frame = score_task(spec, sts, {EmbedKind.query: vectors})
    gold = [g / 5 for g in sts.gold]
    assert metrics["cosine_spearman"] == pytest.approx(spearmanr(gold, frame["cosine"])[0], abs=1e-12)
    assert metrics["cosine_pearson"] == pytest.approx(pearsonr(gold, frame["cosine"])[0], abs=1e-9)
    lookup = dict(zip(texts, vectors, strict=True))
    d = np.array([np.linalg.norm(lookup[a] - lookup[b]) for a, b in zip(sts.sentence1, sts.sentence2, strict=True)])
    assert metrics["euclidean_spearman"] == pytest.approx(spearmanr(gold, -d)[0], abs=1e-9)


def test_pairs_embed_each_sentence_once():
    spec, tw = _load(TWITTER)
    texts = task_inputs(spec, tw)[EmbedKind.query]
    assert len(texts) == len(set(texts)) < len(tw.sentence1) + len(tw.sentence2)


# ---- bad input: file and row named, exit code 2


def _copy(tmp_path, folder, files):
    dst = tmp_path / folder
    dst.mkdir(parents=True)
    for f in files:
        (dst / f).write_bytes((DATA / folder / f).read_bytes())
    return dst


def test_banking_missing_label_column(tmp_path):
    d = _copy(tmp_path, "banking77", ["train.csv", "test.csv", "label_names.json"])
    (d / "test.csv").write_text((d / "test.csv").read_text().replace("text,category", "text,intent", 1))
    with pytest.raises(DatasetError, match=r"test.csv: missing column 'category'") as err:
        _load(B77, tmp_path)
    assert err.value.exit_code == 2


def test_banking_unknown_label_and_empty_split(tmp_path):
    d = _copy(tmp_path, "banking77", ["train.csv", "test.csv", "label_names.json"])
    lines = (d / "test.csv").read_text().splitlines()
    (d / "test.csv").write_text("\n".join([lines[0], lines[1], "hello,not_an_intent", *lines[2:5]]) + "\n")
    with pytest.raises(DatasetError, match=r"test.csv:3: label 'not_an_intent' is not in label_names.json"):
        _load(B77, tmp_path)
    (d / "test.csv").write_text(lines[0] + "\n")
    with pytest.raises(DatasetError, match=r"test.csv: the split is empty"):
        _load(B77, tmp_path)


def test_sts_score_out_of_range(tmp_path):
    d = _copy(tmp_path, "stsbenchmark", ["sts-test.csv"])
    lines = (d / "sts-test.csv").read_text().splitlines()
    cols = lines[3].split("\t")
    cols[4] = "5.5"
    lines[3] = "\t".join(cols)
    (d / "sts-test.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"sts-test.csv:4: score 5.5 is outside 0-5"):
        _load(STS, tmp_path)


def test_pair_bad_label_and_empty(tmp_path):
    d = tmp_path / "twitterurlcorpus"
    d.mkdir()
    (d / "mteb_test.tsv").write_text("a\tb\t1\nc\td\t2\n")
    with pytest.raises(DatasetError, match=r"mteb_test.tsv:2: label '2' is not 0 or 1"):
        _load(TWITTER, tmp_path)
    (d / "mteb_test.tsv").write_text("")
    with pytest.raises(DatasetError, match=r"mteb_test.tsv: the split is empty"):
        _load(TWITTER, tmp_path)


def test_unknown_split_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match=r"sts-validation.csv: no file for split 'validation'"):
        _load(STS, DATA, "validation")


# ---- end to end through the CLI on slices (cached like retrieval; targets work the same way)


@pytest.mark.parametrize(("task", "main"), [(B77, "accuracy"), (TWITTER, "max_ap"), (STS, "cosine_spearman")])
def test_cli_slices(task, main, tmp_path):
    out = tmp_path / "r.json"
    args = [
        "eval",
        MODEL_ID,
        "-t",
        task,
        "-s",
        "local,benchmark",
        "--limit-queries",
        "150",
        "--no-progress",
        "--no-record",
        "-o",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["main_score"] == main and report["variant"] == "test@n150"
    assert 0 < report["sources"]["local"]["metrics"][main] <= 1
    assert report["sources"]["benchmark"]["available"]
    again = CliRunner().invoke(app, args)
    assert json.loads(out.read_text())["sources"]["local"]["forward_calls"] == 0, again.output
