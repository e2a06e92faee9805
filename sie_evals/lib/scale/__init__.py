"""The scale model: a list scheduler that packs steps onto pools of slots as Dagster's executors do
(schedule.py), and a fleet model that turns eval cells, a fleet and per-step costs into those steps
and predicts wall time, busy time per resource and the bottleneck (fleet.py)."""
