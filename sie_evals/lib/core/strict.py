"""The one strict-number rule of every config model: a boolean is never a number.

Pydantic's lax mode turns `true` into 1 for an int field and 1.0 for a float field (bool is a subclass
of int), so `projection_dim: true` ran as 1. Pydantic's `strict=True` would reject booleans too, but it
also rejects the strings that settings read from the environment (`SIE_EVALS_PERF_TRIALS=3`) and, for
ints, floats such as `3.0`; so the rule here rejects booleans only and leaves every other lax conversion
as it was. Use `Int` / `Float` (`OptionalInt` / `OptionalFloat`) wherever a config field holds a number,
also inside containers (`dict[str, Float]`); sie_evals_tests/test_strict_numbers.py walks every config
schema to hold that.
"""

from typing import Annotated, Any

from pydantic import BeforeValidator


def reject_bool(value: Any) -> Any:
    """`value` unchanged, unless it is a boolean where a number is required."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not a boolean ({str(value).lower()})")
    return value


Int = Annotated[int, BeforeValidator(reject_bool)]
Float = Annotated[float, BeforeValidator(reject_bool)]
# Optional fields: `Int | None` validates the same, but pydantic can then no longer put a Field's bounds
# (gt=0) into the JSON schema as `exclusiveMinimum`; the validator around the whole union keeps them.
OptionalInt = Annotated[int | None, BeforeValidator(reject_bool)]
OptionalFloat = Annotated[float | None, BeforeValidator(reject_bool)]
