"""How each native task type (lib/quality/task_types.py) is scored, exactly as MTEB does it.

- retrieval: queries and documents; cosine top-k and pytrec_eval metrics (metrics.py).
- classification (MTEB AbsTaskClassification): for each of 10 experiments, 8 training examples per
  label are drawn (RandomState(42) reshuffles the same index list once per experiment), a
  LogisticRegression(max_iter=100, random_state=42) is fit on their embeddings and scored on the
  test split; accuracy, macro f1/precision/recall and weighted f1/precision/recall are averaged
  over experiments. Only the sampled training texts are embedded.
- pair classification (MTEB PairClassificationEvaluator): cosine, dot, euclidean, manhattan and
  the model similarity (cosine) per pair; best-threshold accuracy, best-threshold f1 with its
  precision/recall (ties never split), average precision; max_* over the similarity functions.
- STS (MTEB AbsTaskSTS): Pearson and Spearman of cosine, -euclidean, -manhattan similarity against
  the gold scores normalised to 0-1.
Pairs embed each distinct sentence once."""

from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from sie_evals.lib.engines.vectors import MuveraVectors
from sie_evals.lib.quality import output_search
from sie_evals.lib.quality.maxsim import maxsim_top_k
from sie_evals.lib.quality.metrics import retrieval_scores
from sie_evals.lib.quality.search import exact_top_k, to_run
from sie_evals.lib.tasks.base import TaskDataBase
from sie_evals.lib.tasks.labeled import ClassificationData, PairData
from sie_evals.lib.tasks.retrieval import RetrievalData
from sie_evals.lib.tasks.spec import ClassificationRules, RetrievalRules, STSRules

TaskData = TaskDataBase  # any task type's data (kept here for the importers of the old union)


# ---------------------------------------------------------------- inputs


def undersample_indices(labels: list[int], rules: ClassificationRules) -> list[list[int]]:
    """MTEB's _undersample_data over all experiments: the index list is shuffled in place with a
    fresh RandomState(seed) each experiment (so shuffles compound), then the first
    `samples_per_label` rows of each label in shuffled order are kept."""
    idxs = list(range(len(labels)))
    experiments = []
    for _ in range(rules.n_experiments):
        np.random.RandomState(rules.seed).shuffle(idxs)
        seen: dict[int, int] = defaultdict(int)
        chosen = []
        for i in idxs:
            if seen[labels[i]] < rules.samples_per_label:
                chosen.append(i)
                seen[labels[i]] += 1
        experiments.append(chosen)
    return experiments


# ---------------------------------------------------------------- scoring


def retrieval_top_k(
    rules: RetrievalRules, queries: np.ndarray, documents: np.ndarray, similarity: str = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """The ranking score_retrieval scores (also what --save-run writes): (scores, indices), top
    max(k_values) per query, best first, ties by document index ascending."""
    k = max(rules.k_values)
    if similarity == "cosine" and isinstance(queries, np.ndarray) and isinstance(documents, np.ndarray):
        return exact_top_k(queries, documents, k=k)
    return output_search.top_k(queries, documents, k, similarity)  # sparse, MaxSim, MUVERA: engines/vectors.py


def score_retrieval(
    rules: RetrievalRules,
    data: RetrievalData,
    queries: np.ndarray,
    documents: np.ndarray,
    similarity: str = "cosine",
    top: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """`top`: retrieval_top_k's result, when the caller keeps the ranking too (lib/quality/ranking.py)."""
    scores, indices = top if top is not None else retrieval_top_k(rules, queries, documents, similarity)
    run = to_run(data.query_ids, data.corpus_ids, scores, indices)
    return retrieval_scores(data.qrels, run, rules.k_values, rules.ignore_identical_ids, rules.skip_first_result)


def muvera_report(rules: RetrievalRules, data: RetrievalData, queries: Any, documents: Any) -> dict[str, Any]:
    """Report fields of MUVERA's pipeline (the headline metrics are the rescored ranking's, from
    retrieval_top_k): the raw FDE search's metrics (top max(k) by FDE dot product) and the recall of
    exact MaxSim's top 10 within the `rescore_k` candidates (an exact MaxSim search over the whole
    corpus: the cost of knowing what the candidates missed). Empty for any other output."""
    if not (isinstance(queries, MuveraVectors) and isinstance(documents, MuveraVectors)):
        return {}
    rescore_k = queries.rescore_k
    k = max(rules.k_values)
    raw_s, raw_i = output_search.dot_top_k(queries.fde, documents.fde, max(k, rescore_k))
    candidates = raw_i[:, :rescore_k]  # rows best first: the top rescore_k, as muvera_top_k takes them
    run = to_run(data.query_ids, data.corpus_ids, raw_s[:, :k], raw_i[:, :k])
    raw_metrics, _ = retrieval_scores(
        data.qrels, run, rules.k_values, rules.ignore_identical_ids, rules.skip_first_result
    )
    _, exact_top10 = maxsim_top_k(queries.tokens, documents.tokens, 10)
    found = [len(set(e) & set(c)) / len(e) for e, c in zip(exact_top10.tolist(), candidates.tolist(), strict=True)]
    return {
        "muvera_rescoring": {
            "rescore_k": rescore_k,
            "ranked_per_query": min(k, rescore_k, len(documents)),
            "maxsim_top10_recall_in_candidates": round(float(np.mean(found)), 5) if found else None,
            "raw_fde_metrics": raw_metrics,
        }
    }


def lookup(texts: list[str], vectors: np.ndarray) -> dict[str, np.ndarray]:
    """text -> its vector (rows align with the texts embedded)."""
    if len(texts) != len(vectors):
        raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
    return dict(zip(texts, vectors, strict=True))


def classification_metrics(y_true: list[int], y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, precision_score, recall_score

    scores = {
        "accuracy": accuracy_score(y_true, y_pred),
        "f1": f1_score(y_true, y_pred, average="macro"),
        "f1_weighted": f1_score(y_true, y_pred, average="weighted"),
        "precision": precision_score(y_true, y_pred, average="macro"),
        "precision_weighted": precision_score(y_true, y_pred, average="weighted"),
        "recall": recall_score(y_true, y_pred, average="macro"),
        "recall_weighted": recall_score(y_true, y_pred, average="weighted"),
    }
    if len(np.unique(y_true)) == 2:
        scores["ap"] = average_precision_score(y_true, y_pred, average="macro")
        scores["ap_weighted"] = average_precision_score(y_true, y_pred, average="weighted")
    return {k: float(v) for k, v in scores.items()}


def score_classification(
    data: ClassificationData, lookup: dict[str, np.ndarray], rules: ClassificationRules
) -> tuple[dict[str, float], pd.DataFrame]:
    from sklearn.linear_model import LogisticRegression

    test_x = np.stack([lookup[t] for t in data.test_texts])
    per_experiment, predictions = [], []
    for chosen in undersample_indices(data.train_labels, rules):
        clf = LogisticRegression(max_iter=100, random_state=rules.seed)
        clf.fit(np.stack([lookup[data.train_texts[i]] for i in chosen]), [data.train_labels[i] for i in chosen])
        y_pred = clf.predict(test_x)
        predictions.append(y_pred)
        per_experiment.append(classification_metrics(data.test_labels, y_pred))
    metrics = {k: float(np.mean([m[k] for m in per_experiment])) for k in per_experiment[0]}
    for i, m in enumerate(per_experiment):
        metrics[f"experiment_{i}_accuracy"] = m["accuracy"]
    correct = np.mean([p == np.asarray(data.test_labels) for p in predictions], axis=0)
    frame = pd.DataFrame(
        {"query_id": [str(i) for i in range(len(data.test_labels))], "label": data.test_labels, "accuracy": correct}
    )
    return metrics, frame


def _best_accuracy(scores: list[float], labels: np.ndarray, high_is_similar: bool) -> tuple[float, float]:
    rows = sorted(zip(scores, labels, strict=True), key=lambda x: x[0], reverse=high_is_similar)
    max_acc, best_threshold = 0.0, -1.0
    positives, remaining_negatives = 0, int(sum(labels == 0))
    for i in range(len(rows) - 1):
        score, label = rows[i]
        if label == 1:
            positives += 1
        else:
            remaining_negatives -= 1
        if score == rows[i + 1][0]:  # a threshold cannot split tied scores
            continue
        acc = (positives + remaining_negatives) / len(labels)
        if acc > max_acc:
            max_acc, best_threshold = acc, (rows[i][0] + rows[i + 1][0]) / 2
    return max_acc, best_threshold


def _best_f1(scores: list[float], labels: np.ndarray, high_is_similar: bool) -> tuple[float, float, float, float]:
    rows = sorted(zip(scores, labels, strict=True), key=lambda x: x[0], reverse=high_is_similar)
    best_f1 = best_p = best_r = threshold = 0.0
    correct, total_positive = 0, int(sum(labels))
    for i, (score, label) in enumerate(rows[:-1]):
        if label == 1:
            correct += 1
        if score == rows[i + 1][0]:
            continue
        if correct > 0:
            p, r = correct / (i + 1), correct / total_positive
            f1 = 2 * p * r / (p + r)
            if f1 > best_f1:
                best_f1, best_p, best_r, threshold = f1, p, r, (rows[i][0] + rows[i + 1][0]) / 2
    return best_f1, best_p, best_r, threshold


def _pair_similarities(e1: np.ndarray, e2: np.ndarray) -> dict[str, tuple[np.ndarray, bool]]:
    """name -> (scores, higher-is-more-similar), computed like MTEB (sklearn paired_* in float32)."""
    import torch
    from sklearn.metrics.pairwise import (
        paired_cosine_distances,
        paired_euclidean_distances,
        paired_manhattan_distances,
    )

    a, b = torch.from_numpy(e1), torch.from_numpy(e2)
    model_similarity = (torch.nn.functional.normalize(a, dim=1) * torch.nn.functional.normalize(b, dim=1)).sum(-1)
    return {
        "similarity": (model_similarity.numpy(), True),
        "cosine": (1 - paired_cosine_distances(e1, e2), True),
        "manhattan": (paired_manhattan_distances(e1, e2), False),
        "euclidean": (paired_euclidean_distances(e1, e2), False),
        "dot": (np.asarray([np.dot(e1[i], e2[i]) for i in range(len(e1))]), True),
    }


def score_pair_classification(data: PairData, e1: np.ndarray, e2: np.ndarray) -> tuple[dict[str, float], pd.DataFrame]:
    from sklearn.metrics import average_precision_score

    labels = np.asarray(data.gold, dtype=np.int64)
    sims = _pair_similarities(e1, e2)
    metrics: dict[str, float] = {}
    best: dict[str, list[float]] = defaultdict(list)
    for name, (scores, high) in sims.items():
        values = scores.tolist()
        acc, acc_threshold = _best_accuracy(values, labels, high)
        f1, precision, recall, f1_threshold = _best_f1(values, labels, high)
        ap = average_precision_score(labels, np.array(values) * (1 if high else -1))
        row = {"accuracy": acc, "f1": f1, "precision": precision, "recall": recall, "ap": ap}
        for metric, value in row.items():
            metrics[f"{name}_{metric}"] = float(value)
            best[metric].append(float(value))
        metrics[f"{name}_accuracy_threshold"] = float(acc_threshold)
        metrics[f"{name}_f1_threshold"] = float(f1_threshold)
    for metric, values in best.items():
        metrics[f"max_{metric}"] = max(values)
    frame = pd.DataFrame(
        {
            "query_id": [str(i) for i in range(len(labels))],
            "label": labels,
            **{name: scores for name, (scores, _) in sims.items()},
        }
    )
    return metrics, frame


def score_sts(data: PairData, e1: np.ndarray, e2: np.ndarray, rules: STSRules) -> tuple[dict[str, float], pd.DataFrame]:
    from scipy.stats import pearsonr, spearmanr

    gold = [(s - rules.min_score) / (rules.max_score - rules.min_score) for s in data.gold]
    sims = _pair_similarities(e1, e2)
    metrics: dict[str, Any] = {}
    for name in ("similarity", "cosine", "manhattan", "euclidean"):
        scores, high = sims[name]
        values = (scores if high else -scores).tolist()
        prefix = "" if name == "similarity" else f"{name}_"
        metrics[f"{prefix}pearson"] = float(pearsonr(gold, values)[0])
        metrics[f"{prefix}spearman"] = float(spearmanr(gold, values)[0])
    frame = pd.DataFrame(
        {"query_id": [str(i) for i in range(len(gold))], "gold": data.gold, "cosine": sims["cosine"][0]}
    )
    return metrics, frame
