"""What a task is, as data: its spec (id, type, where its data lives) and its rules, one pydantic model per task
type with unknown fields forbidden (as MTEB's TaskMetadata). A leaf: the loaders, the registry and the task-type
classes (lib/quality/task_types.py) import it; it imports nothing of the project."""

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

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


class TaskRules(BaseModel):
    """What every task type's rules say: the splits it is evaluated on, its main score, and what --save-targets
    stores and --check-targets gates on (users may add any valid metric by hand)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_splits: tuple[str, ...] = ("test",)
    main_score: str
    target_metrics: tuple[str, ...]


class RetrievalRules(TaskRules):
    """MTEB's AbsTaskRetrieval defaults."""

    main_score: str = "ndcg_at_10"
    target_metrics: tuple[str, ...] = RETRIEVAL_TARGETS
    k_values: tuple[int, ...] = MTEB_K_VALUES
    ignore_identical_ids: bool = False
    skip_first_result: bool = False


class ClassificationRules(TaskRules):
    """MTEB AbsTaskClassification: experiments, examples drawn per label, seed."""

    main_score: str = "accuracy"
    target_metrics: tuple[str, ...] = ("accuracy", "f1", "f1_weighted", "precision", "recall")
    n_experiments: int = 10
    samples_per_label: int = 8
    seed: int = 42


class PairClassificationRules(TaskRules):
    main_score: str = "max_ap"
    target_metrics: tuple[str, ...] = (
        "max_ap",
        "cosine_ap",
        "cosine_accuracy",
        "cosine_f1",
        "cosine_precision",
        "cosine_recall",
    )


class STSRules(TaskRules):
    """The gold score range, normalised to 0-1 as MTEB does."""

    main_score: str = "cosine_spearman"
    target_metrics: tuple[str, ...] = ("cosine_spearman", "cosine_pearson", "euclidean_spearman", "manhattan_spearman")
    min_score: float = 0.0
    max_score: float = 5.0


class FinesseRules(TaskRules):
    eval_splits: tuple[str, ...] = ("probes",)


class MtebRules(TaskRules):
    """A task run through MTEB's own code: every other rule is the installed mteb's task definition."""


@dataclass(frozen=True)
class TaskSpec:
    task_id: str
    type: str  # a registered task type's name (lib/quality/task_types.py), or mteb:<MTEB type>
    local_dir: str  # folder name under the data root
    hf_dataset: str | None = None  # hub dataset with corpus/queries/default(qrels) configs (MTEB layout)
    hf_revision: str | None = None
    mteb_name: str | None = None
    aliases: tuple[str, ...] = ()
    rules: TaskRules = field(default_factory=RetrievalRules)
    registered: bool = True
    backend: str = "native"  # native (this project's code) | mteb (MTEB's task code and evaluators)
    hf_subset: str | None = None  # an MTEB task's language subset

    @property
    def default_split(self) -> str:
        return self.rules.eval_splits[0]
