"""The one place that defines how an evaluation is keyed: `model:task:source` (Dagster partitions,
result paths, report entries)."""

from dataclasses import dataclass

SEP = ":"


@dataclass(frozen=True, order=True)
class EvalKey:
    model: str  # the model config's short name
    task: str  # canonical task id, e.g. beir/SciFact
    source: str

    def __post_init__(self) -> None:
        for part in (self.model, self.task, self.source):
            if not part or SEP in part:
                raise ValueError(f"key part {part!r} must be non-empty and contain no {SEP!r}")

    def __str__(self) -> str:
        return SEP.join((self.model, self.task, self.source))

    @classmethod
    def parse(cls, key: str) -> "EvalKey":
        parts = key.split(SEP)
        if len(parts) != 3:
            raise ValueError(f"partition key {key!r} is not model{SEP}task{SEP}source")
        return cls(*parts)

    def path_slug(self) -> str:
        return path_slug(str(self))


def path_slug(partition_key: str) -> str:
    """A file-system-safe form of any partition key (task ids contain '/', eval keys ':')."""
    return partition_key.replace("/", "--").replace(SEP, "__")
