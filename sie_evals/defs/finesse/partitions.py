"""Finesse partitions: every model:task:source whose task is a Finesse task (type "finesse") in
model_configs/, as dynamic partitions kept equal to the configs by the `eval_cells_sync` sensor
(defs/evals/partitions.py: why dynamic, and `finesse_keys`)."""

import dagster as dg

from sie_evals.defs.evals.partitions import FINESSE_CELLS, finesse_keys

__all__ = ["FINESSE_CELLS", "finesse_keys", "finesse_partitions"]

finesse_partitions = dg.DynamicPartitionsDefinition(name=FINESSE_CELLS)
