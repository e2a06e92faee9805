"""Namespaced task ids (`beir/SciFact`, alias `mteb/SciFact`) and the evaluation rules each carries.

Registered tasks carry where their data lives on the Hugging Face hub. Any other `beir/<Name>` is
resolved on the fly to `<data root>/<name lower-cased>/` (BEIR's own folder naming); when MTEB has a
retrieval task for that folder (its name or its hub dataset's name), MTEB's rules for it (split, k values,
ignore_identical_ids, skip_first_result) are read from the installed mteb's task definition.
`mteb/<TaskName>[/<subset>]` is any text task of the installed mteb (see mteb_tasks.py): the native path where
the project has one (the default), else MTEB's own task code (`backend="mteb"`).
"""

from sie_evals.lib.core.errors import InputError, UnknownNameError
from sie_evals.lib.tasks.spec import (
    MTEB_K_VALUES,
    ClassificationRules,
    FinesseRules,
    MtebRules,
    PairClassificationRules,
    RetrievalRules,
    STSRules,
    TaskSpec,
)

__all__ = ["MTEB_K_VALUES", "TaskSpec", "register_task", "registered_tasks", "resolve_task", "unregister_task"]

CLASSIFICATION_RULES = ClassificationRules()
PAIR_CLASSIFICATION_RULES = PairClassificationRules()
STS_RULES = STSRules()


_REGISTERED: tuple[TaskSpec, ...] = (
    TaskSpec(
        task_id="beir/SciFact",
        type="retrieval",
        local_dir="scifact",
        hf_dataset="mteb/scifact",
        hf_revision="0228b52cf27578f30900b9e5271d331663a030d7",
        mteb_name="SciFact",
        aliases=("mteb/SciFact",),
        rules=RetrievalRules(),
    ),
    TaskSpec(
        task_id="beir/NFCorpus",
        type="retrieval",
        local_dir="nfcorpus",
        hf_dataset="mteb/nfcorpus",
        hf_revision="ec0fa4fe99da2ff19ca1214b7966684033a58814",
        mteb_name="NFCorpus",
        aliases=("mteb/NFCorpus",),
        rules=RetrievalRules(),
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
        raise InputError(
            f"{self.task_id} is a Finesse task: run it with the `finesse` CLI (finesse generate --config "
            f"sie_evals/data/finesse/{self.task_id.split('/', 1)[1]}.yaml, then finesse score) or the Dagster "
            "finesse assets; sie-bench eval does not run it"
        )


# Finesse tasks: task id -> the config shipped in sie_evals/data/finesse/<name>.yaml.
FINESSE_RULES = FinesseRules(main_score="average_rss", target_metrics=("average_rss",))
FINESSE_SRS_RULES = FinesseRules(main_score="average_srs", target_metrics=("average_srs",))
_FINESSE: tuple[TaskSpec, ...] = (
    FinesseTaskSpec(task_id="finesse/rss-default", type="finesse", local_dir="scifact", rules=FINESSE_RULES),
    FinesseTaskSpec(task_id="finesse/srs-default", type="finesse", local_dir="scifact", rules=FINESSE_SRS_RULES),
)
_TASKS: dict[str, TaskSpec] = {spec.task_id: spec for spec in (*_REGISTERED, *_FINESSE)}


def register_task(spec: TaskSpec) -> None:
    """Adds a task (a task type's own tasks: lib/quality/task_types.register_task_type); its id and aliases must
    be new."""
    index = _index()
    taken = [n for n in (spec.task_id, *spec.aliases) if n.lower() in index]
    if taken:
        raise ValueError(f"task id or alias {', '.join(taken)} is already registered")
    _TASKS[spec.task_id] = spec


def unregister_task(task_id: str) -> None:
    _TASKS.pop(task_id, None)


def _index() -> dict[str, TaskSpec]:
    index: dict[str, TaskSpec] = {}
    for spec in _TASKS.values():
        for name in (spec.task_id, *spec.aliases):
            index[name.lower()] = spec
    return index


def registered_tasks() -> tuple[TaskSpec, ...]:
    return tuple(_TASKS.values())


def list_task_ids() -> list[str]:
    return sorted(_TASKS)


BACKENDS = ("native", "mteb")


def mteb_task_types() -> list[str]:
    """The MTEB task types (`Retrieval`, `Clustering`, ...) of the installed mteb's text tasks."""
    from sie_evals.lib.tasks.mteb_tasks import text_tasks

    return sorted({task.metadata.type for task in text_tasks()})


def resolve_task_type(task_type: str) -> str:
    """`task_type` as MTEB spells it (matched case-insensitively), or UnknownNameError listing the
    valid ones: a typo must not list nothing and pass."""
    valid = mteb_task_types()
    for name in valid:
        if name.lower() == task_type.lower():
            return name
    raise UnknownNameError("task type", task_type, valid)


def _mteb_rules(task) -> RetrievalRules:
    """A retrieval task's rules as the installed mteb defines them."""
    return RetrievalRules(
        eval_splits=tuple(task.metadata.eval_splits),
        main_score=task.metadata.main_score,
        k_values=tuple(getattr(task, "k_values", MTEB_K_VALUES)),
        ignore_identical_ids=bool(getattr(task, "ignore_identical_ids", False)),
        skip_first_result=bool(getattr(task, "skip_first_result", False)),
    )


def mteb_spec(name: str, hf_subset: str | None = None, native: "TaskSpec | None" = None) -> TaskSpec:
    """The spec of an MTEB task run through MTEB's own code."""
    from sie_evals.lib.tasks.mteb_tasks import get_mteb_task

    task = get_mteb_task(name, hf_subset)
    m = task.metadata
    main = m.main_score
    native_targets = native.rules.target_metrics if native and native.rules.main_score == main else ()
    return TaskSpec(
        # a native task forced through MTEB keeps its id, so targets and published scores line up
        task_id=native.task_id if native else f"mteb/{m.name}" + (f"/{hf_subset}" if hf_subset else ""),
        type=native.type if native else f"mteb:{m.type}",
        local_dir=native.local_dir if native else m.name.lower(),
        hf_dataset=m.dataset["path"],
        hf_revision=m.dataset.get("revision"),
        mteb_name=m.name,
        rules=MtebRules(eval_splits=tuple(m.eval_splits), main_score=main, target_metrics=native_targets or (main,)),
        registered=False,
        backend="mteb",
        hf_subset=hf_subset,
    )


def resolve_task(task: str, backend: str | None = None) -> TaskSpec:
    """A registered id or alias (case-insensitive), any `beir/<Name>` (a BEIR folder on disk), or any
    `mteb/<TaskName>[/<subset>]` of the installed mteb. `backend` forces native or MTEB's code; by default the
    native path is taken where it exists."""
    if backend not in (None, *BACKENDS):
        raise UnknownNameError("backend", str(backend), list(BACKENDS))
    spec = _index().get(task.lower())
    namespace, _, rest = task.partition("/")
    if spec is not None and backend != "mteb":
        return spec
    if spec is not None and spec.mteb_name:  # a native task forced through MTEB's code
        return mteb_spec(spec.mteb_name, native=spec)
    if namespace.lower() == "beir" and rest and "/" not in rest:
        folder = rest.lower()
        from sie_evals.lib.tasks.mteb_tasks import retrieval_rules_by_folder

        mteb_task = retrieval_rules_by_folder().get(folder)
        if backend == "mteb":
            if mteb_task is None:
                raise UnknownNameError("MTEB retrieval task for BEIR folder", rest, ["an MTEB retrieval task name"])
            return mteb_spec(mteb_task.metadata.name)
        return TaskSpec(
            task_id=f"beir/{rest}",
            type="retrieval",
            local_dir=folder,
            mteb_name=mteb_task.metadata.name if mteb_task is not None else None,
            rules=_mteb_rules(mteb_task) if mteb_task is not None else RetrievalRules(),
            registered=False,
        )
    if namespace.lower() == "mteb" and rest:
        name, _, hf_subset = rest.partition("/")
        native = _index().get(f"mteb/{name}".lower())
        if native is not None and not hf_subset and backend != "mteb":
            return native
        if backend == "native":
            raise InputError(f"task {task}: this project has no native implementation; use --backend mteb (or omit it)")
        return mteb_spec(name, hf_subset or None, native=native if not hf_subset else None)
    valid = [
        *list_task_ids(),
        "beir/<Name> (any BEIR folder under the data root)",
        "mteb/<TaskName>[/<subset>] (any text task of the installed mteb; `sie-bench tasks` lists them)",
    ]
    raise UnknownNameError("task", task, valid)
