"""The Celery app of the sharding test's workers: the project's worker app (sie_evals.defs.celery_app) with the
test's deterministic `batchy` source registered first, so every step a worker runs can build its engine.
`celery -A sie_evals_tests.sharding_worker worker -Q gpu`."""

from sie_evals.lib.core.sources import SOURCES, register_source
from sie_evals_tests.sharding_engine import BATCHY

if BATCHY.name not in SOURCES:
    register_source(BATCHY)

from sie_evals.defs.celery_app import app, execute_plan  # after the source is in the table

__all__ = ["app", "execute_plan"]
