"""Namespaced task ids (`beir/SciFact`, alias `mteb/SciFact`) and the evaluation rules each carries.

Registered tasks carry where their data lives on the Hugging Face hub. Any other `beir/<Name>` is
resolved on the fly to `<data root>/<name lower-cased>/` (BEIR's own folder naming); when MTEB has a
retrieval task of the same name, MTEB's rules for it (split, k values, ignore_identical_ids,
skip_first_result) are applied, as listed in `MTEB_RETRIEVAL_RULES`.
"""

from dataclasses import dataclass, field

from sie_evals.lib.core.errors import UnknownNameError

# MTEB's retrieval defaults (mteb.abstasks.retrieval.AbsTaskRetrieval).
MTEB_K_VALUES: tuple[int, ...] = (1, 3, 5, 10, 20, 100, 1000)


RETRIEVAL_TARGETS = (
    "ndcg_at_10",
    "map_at_10",
    "recall_at_10",
    "precision_at_10",
    "mrr_at_10",
    "ndcg_at_100",
    "recall_at_100",
)


@dataclass(frozen=True)
class EvalRules:
    """How MTEB evaluates a task (one rules type for every task type; fields a type does not use are
    ignored). Defaults are MTEB's AbsTaskRetrieval / AbsTaskClassification ones."""

    eval_splits: tuple[str, ...] = ("test",)
    main_score: str = "ndcg_at_10"
    k_values: tuple[int, ...] = MTEB_K_VALUES
    ignore_identical_ids: bool = False
    skip_first_result: bool = False
    # What --save-targets stores and --check-targets gates on (users may add any valid metric by hand).
    target_metrics: tuple[str, ...] = RETRIEVAL_TARGETS
    # classification (MTEB AbsTaskClassification): experiments, examples drawn per label, seed
    n_experiments: int = 10
    samples_per_label: int = 8
    seed: int = 42
    # STS: the gold score range, normalised to 0-1 as MTEB does
    min_score: float = 0.0
    max_score: float = 5.0


CLASSIFICATION_RULES = EvalRules(
    main_score="accuracy", target_metrics=("accuracy", "f1", "f1_weighted", "precision", "recall")
)
PAIR_CLASSIFICATION_RULES = EvalRules(
    main_score="max_ap",
    target_metrics=("max_ap", "cosine_ap", "cosine_accuracy", "cosine_f1", "cosine_precision", "cosine_recall"),
)
STS_RULES = EvalRules(
    main_score="cosine_spearman",
    target_metrics=("cosine_spearman", "cosine_pearson", "euclidean_spearman", "manhattan_spearman"),
)


# The BEIR datasets that MTEB defines as retrieval tasks, with MTEB's non-default rules
# (read from mteb 2.x `mteb/tasks/retrieval/eng/*.py`). Keyed by the lower-cased BEIR folder name.
MTEB_RETRIEVAL_RULES: dict[str, tuple[str, EvalRules]] = {
    "arguana": ("ArguAna", EvalRules(ignore_identical_ids=True)),
    "climate-fever": ("ClimateFEVER", EvalRules()),
    "cqadupstack": ("CQADupstackRetrieval", EvalRules()),
    "dbpedia-entity": ("DBPedia", EvalRules()),
    "fever": ("FEVER", EvalRules(ignore_identical_ids=True)),
    "fiqa": ("FiQA2018", EvalRules(ignore_identical_ids=True)),
    "hotpotqa": ("HotpotQA", EvalRules()),
    "msmarco": ("MSMARCO", EvalRules(eval_splits=("dev",), ignore_identical_ids=True)),
    "nfcorpus": ("NFCorpus", EvalRules()),
    "nq": ("NQ", EvalRules()),
    "quora": ("QuoraRetrieval", EvalRules(eval_splits=("test",), ignore_identical_ids=True)),
    "scidocs": ("SCIDOCS", EvalRules()),
    "scifact": ("SciFact", EvalRules()),
    "trec-covid": ("TRECCOVID", EvalRules()),
    "webis-touche2020": ("Touche2020", EvalRules()),
}


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    type: str  # retrieval | classification | pair_classification | sts
    local_dir: str  # folder name under the data root
    hf_dataset: str | None = None  # hub dataset with corpus/queries/default(qrels) configs (MTEB layout)
    hf_revision: str | None = None
    mteb_name: str | None = None
    aliases: tuple[str, ...] = ()
    rules: EvalRules = field(default_factory=EvalRules)
    registered: bool = True

    @property
    def default_split(self) -> str:
        return self.rules.eval_splits[0]


_REGISTERED: tuple[TaskSpec, ...] = (
    TaskSpec(
        task_id="beir/SciFact",
        type="retrieval",
        local_dir="scifact",
        hf_dataset="mteb/scifact",
        hf_revision="0228b52cf27578f30900b9e5271d331663a030d7",
        mteb_name="SciFact",
        aliases=("mteb/SciFact",),
        rules=MTEB_RETRIEVAL_RULES["scifact"][1],
    ),
    TaskSpec(
        task_id="beir/NFCorpus",
        type="retrieval",
        local_dir="nfcorpus",
        hf_dataset="mteb/nfcorpus",
        hf_revision="ec0fa4fe99da2ff19ca1214b7966684033a58814",
        mteb_name="NFCorpus",
        aliases=("mteb/NFCorpus",),
        rules=MTEB_RETRIEVAL_RULES["nfcorpus"][1],
    ),
    TaskSpec(
        task_id="mteb/Banking77Classification",
        type="classification",
        local_dir="banking77",
        hf_dataset="mteb/banking77",
        hf_revision="0fd18e25b25c072e09e0d92ab615fda904d66300",
        mteb_name="Banking77Classification",
        aliases=("mteb/Banking77",),
        rules=CLASSIFICATION_RULES,
    ),
    TaskSpec(
        task_id="mteb/TwitterURLCorpus",
        type="pair_classification",
        local_dir="twitterurlcorpus",
        hf_dataset="mteb/twitterurlcorpus-pairclassification",
        hf_revision="8b6510b0b1fa4e4c4f879467980e9be563ec1cdf",
        mteb_name="TwitterURLCorpus",
        rules=PAIR_CLASSIFICATION_RULES,
    ),
    TaskSpec(
        task_id="mteb/STSBenchmark",
        type="sts",
        local_dir="stsbenchmark",
        hf_dataset="mteb/stsbenchmark-sts",
        hf_revision="b0fddb56ed78048fa8b90373c8a3cfc37b684831",
        mteb_name="STSBenchmark",
        rules=STS_RULES,
    ),
)


class FinesseTaskSpec(TaskSpec):
    """A Finesse long-context task: run by the `finesse` CLI and the Dagster finesse assets, not `sie-bench eval`."""

    @property
    def default_split(self) -> str:
        from sie_evals.lib.core.errors import InputError

        raise InputError(
            f"{self.task_id} is a Finesse task: run it with the `finesse` CLI (finesse generate --config "
            f"sie_evals/data/finesse/{self.task_id.split('/', 1)[1]}.yaml, then finesse score) or the Dagster "
            "finesse assets; sie-bench eval does not run it"
        )


# Finesse tasks: task id -> the config shipped in sie_evals/data/finesse/<name>.yaml.
FINESSE_RULES = EvalRules(eval_splits=("probes",), main_score="average_rss", target_metrics=("average_rss",))
FINESSE_SRS_RULES = EvalRules(eval_splits=("probes",), main_score="average_srs", target_metrics=("average_srs",))
_FINESSE: tuple[TaskSpec, ...] = (
    FinesseTaskSpec(task_id="finesse/rss-default", type="finesse", local_dir="scifact", rules=FINESSE_RULES),
    FinesseTaskSpec(task_id="finesse/srs-default", type="finesse", local_dir="scifact", rules=FINESSE_SRS_RULES),
)
_REGISTERED = (*_REGISTERED, *_FINESSE)


def _index() -> dict[str, TaskSpec]:
    index: dict[str, TaskSpec] = {}
    for spec in _REGISTERED:
        for name in (spec.task_id, *spec.aliases):
            index[name.lower()] = spec
    return index


def registered_tasks() -> tuple[TaskSpec, ...]:
    return _REGISTERED


def list_task_ids() -> list[str]:
    return sorted(spec.task_id for spec in _REGISTERED)


def resolve_task(task: str) -> TaskSpec:
    """A registered id or alias (case-insensitive), or any `beir/<Name>` (a BEIR folder on disk)."""
    spec = _index().get(task.lower())
    if spec is not None:
        return spec
    namespace, _, name = task.partition("/")
    if namespace.lower() == "beir" and name and "/" not in name:
        folder = name.lower()
        mteb_name, rules = MTEB_RETRIEVAL_RULES.get(folder, (None, EvalRules()))
        return TaskSpec(
            task_id=f"beir/{name}",
            type="retrieval",
            local_dir=folder,
            mteb_name=mteb_name,
            rules=rules,
            registered=False,
        )
    valid = [*list_task_ids(), "beir/<Name> (any BEIR folder under the data root)"]
    raise UnknownNameError("task", task, valid)
