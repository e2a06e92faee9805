"""Check one result against what is saved under its ResultKey, then save it: the steps of
`--check-targets/--check-measurements/--save-targets/--save-measurements` for a result computed
elsewhere (the `finesse gate` command). Same keys, margins and diagnosis as `sie-bench eval`."""

from dataclasses import dataclass, field
from typing import Any

from sie_evals.lib.config.model_config import ModelConfig
from sie_evals.lib.gates.drift import CheckResult, check_source, reference
from sie_evals.lib.gates.keys import ResultKey
from sie_evals.lib.gates.saved_results import append_measurement, save_target
from sie_evals.lib.gates.thresholds import Against
from sie_evals.lib.tasks import TaskSpec


@dataclass
class GateOutcome:
    config: ModelConfig
    checks: list[CheckResult] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def gate_result(
    config: ModelConfig,
    spec: TaskSpec,
    key: ResultKey,
    source: str,
    metrics: dict[str, float],
    conditions: dict[str, Any],
    against: tuple[Against, ...] = (),
    require: bool = False,
    save_as_target: bool = False,
    save_as_measurement: bool = False,
) -> GateOutcome:
    """Checks run against what was saved before; saving comes after (as in `sie-bench eval`)."""
    outcome = GateOutcome(config)
    wanted = spec.rules.target_metrics
    for a in against:
        ref = reference(a.value, config, spec, key)
        outcome.checks.append(
            check_source(source, metrics, None, a, ref, config, spec, require, wanted, key, conditions)
        )
    to_save = {m: float(v) for m, v in metrics.items() if m in wanted}
    if save_as_target:
        outcome.config = save_target(outcome.config, key, source, to_save, conditions)
        outcome.saved.append(f"targets{key.where()} <- {source}")
    if save_as_measurement:
        outcome.config, mid = append_measurement(outcome.config, key, source, to_save, conditions)
        outcome.saved.append(f"measurements{key.where()} += {mid}")
    return outcome
