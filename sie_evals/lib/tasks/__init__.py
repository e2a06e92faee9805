"""Task registry and loaders."""

from sie_evals.lib.tasks.registry import TaskSpec, list_task_ids, resolve_task
from sie_evals.lib.tasks.retrieval import RetrievalData, load_retrieval_data

__all__ = ["RetrievalData", "TaskSpec", "list_task_ids", "load_retrieval_data", "resolve_task"]
