"""Drift checks of a Finesse task's main score (average_rss for RSS tasks, average_srs for SRS tasks: the task's
target_metrics) against the model config's targets / measurements: the eval checks' factory (defs/evals/checks.py),
with the same code and margins as every other eval. Saved entries live under targets[<task>][<profile>]["probes"]."""

from sie_evals.defs.evals.checks import drift_check_spec
from sie_evals.defs.finesse.assets import finesse_scores
from sie_evals.lib.gates.thresholds import Against

MAIN_SCORE = "The task's main score (average_rss, or average_srs for SRS tasks): "

finesse_rss_vs_target = drift_check_spec(
    finesse_scores, "finesse_rss_vs_target", Against.targets, blocking=True, subject=MAIN_SCORE
)
finesse_rss_vs_measurement = drift_check_spec(
    finesse_scores, "finesse_rss_vs_measurement", Against.measurements, subject=MAIN_SCORE
)
