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


# A profile with its own output type (sparse, multivector, MUVERA) is evaluated as its own partitions:
# the key's model part is `model@profile` (short names and profile names cannot contain '@').
PROFILE_SEP = "@"


def model_part(model: str, profile: str | None = None) -> str:
    """The model part of a key: the short name, plus `@profile` for a non-default profile."""
    return model if profile in (None, "default") else f"{model}{PROFILE_SEP}{profile}"


def split_model_part(part: str) -> tuple[str, str | None]:
    """`model@profile` -> (model, profile); a bare model -> (model, None): the deployment's profile."""
    model, sep, profile = part.partition(PROFILE_SEP)
    return model, (profile if sep else None)
