"""Dagster domain for Finesse runs: finesse_embeddings -> finesse_scores [model:task:source], with drift checks."""
