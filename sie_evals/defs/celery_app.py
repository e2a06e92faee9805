"""The Celery app a worker runs: `celery -A sie_evals.defs.celery_app worker -Q gpu -n gpu@%h`.

Built from the same environment and settings as the runs' executor (executors.py), so broker and
backend come from $SIE_EVALS_CELERY_BROKER / $SIE_EVALS_CELERY_BACKEND and are never written to disk
(dagster-celery's own `worker start -y` writes them into a config module under $DAGSTER_HOME)."""

import os

from celery import Task
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

from sie_evals.defs.executors import WORKER_REQUIRES_VAR, celery_app_args, missing_requirements


class RequirementsChecked(Task):
    """A worker without what its queue needs fails each step it takes, naming itself and what is
    missing, instead of running it somewhere it cannot work (or silently on the CPU)."""

    def __call__(self, *args, **kwargs):
        missing = missing_requirements(os.environ.get(WORKER_REQUIRES_VAR, ""))
        if missing:
            raise RuntimeError(
                f"Celery worker {self.request.hostname} cannot run this step: it lacks {'; '.join(missing)} "
                f"(${WORKER_REQUIRES_VAR}={os.environ[WORKER_REQUIRES_VAR]!r})"
            )
        return super().__call__(*args, **kwargs)


app = make_app(celery_app_args())
execute_plan = create_task(app, base=RequirementsChecked)
