"""What every task's data has in common: identity, the subset it is, and a description for reports."""

from typing import Any


class TaskDataBase:
    task_id: str
    split: str
    origin: str
    subset: dict[str, int] | None
    content_hash: str

    @property
    def counts(self) -> dict[str, int]:
        raise NotImplementedError

    @property
    def variant(self) -> str:
        """Which data a result belongs to: the split, or split@n<N> for a subset. Targets and
        measurements are keyed by it, so a slice is never compared with the full split."""
        return self.split if not self.subset else f"{self.split}@n{self.subset['limit']}"

    def snapshot_meta(self) -> dict[str, Any]:
        """What the `task_dataset` snapshot records beside the tables (snapshot.py); the tables themselves come
        from `snapshot_frames()` and are read back by the classmethod `from_snapshot(common, meta, frame)`."""
        return {}

    def describe(self) -> dict[str, Any]:
        warnings = list(getattr(self, "warnings", ()))
        return {
            **({"warnings": warnings} if warnings else {}),
            "task": self.task_id,
            "split": self.split,
            "origin": self.origin,
            "counts": self.counts,
            "content_hash": self.content_hash,
            "subset": self.subset,
            "variant": self.variant,
        }
