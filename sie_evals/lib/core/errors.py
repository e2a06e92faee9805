"""Error types with the exit codes the CLI documents (0 pass, 1 failure/drift, 2 usage or input)."""


class SieEvalsError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class InputError(SieEvalsError):
    """Malformed or missing user input: config, dataset, result file, CLI arguments."""

    exit_code = 2


class ConfigError(InputError):
    """A model config that does not validate. The message names the file and the field."""


class DatasetError(InputError):
    """A dataset that cannot be loaded as the task requires. The message names the file (and line)."""


class UnknownNameError(InputError):
    """A model, task or source name that does not exist; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, valid
        listing = ", ".join(valid) if valid else "(none)"
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {listing}")


class EngineError(SieEvalsError):
    """An engine failed to produce embeddings (bad reply, crashed server, wrong shape, NaN)."""


class SetupError(EngineError):
    """Software the engine needs is missing on this machine (a server venv, an executable). Retrying
    will not help: orchestration treats it as final, unlike a transient EngineError."""


def validation_error_message(source: str, what: str, err, field_prefix: str = "") -> str:
    """A pydantic ValidationError as one line per field, e.g. `  field 'profiles.x.dtype': ...`, headed
    by the file (or source) and what it should have been. Unknown keys say so in plain words."""
    lines = [f"{source}: invalid {what} ({err.error_count()} error(s))"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key (not allowed)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {field_prefix}field '{field}': {msg}")
    return "\n".join(lines)
