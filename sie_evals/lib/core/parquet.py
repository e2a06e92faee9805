"""Reading back a Parquet file a person may have edited, truncated or replaced (per-query scores, ranked
runs, saved results): one rule for what is wrong with it, as an InputError naming the file and the column."""

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa

from sie_evals.lib.core.errors import InputError

ColumnKind = Literal["id", "integer", "number"]
# kind -> (does a column's dtype hold it, how a message says it); an id is anything, read back as text
_KINDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "integer": (pd.api.types.is_integer_dtype, "integers"),
    "number": (pd.api.types.is_numeric_dtype, "numbers"),
}


def read_parquet_table(path: Path, required: Mapping[str, ColumnKind], what: str, remedy: str = "") -> pd.DataFrame:
    """The table at `path`, its `required` columns checked (name -> kind; "id" columns come back as str).
    `what` names the content in messages ("the ranked run"), `remedy` follows the unreadable-file one.
    A missing file raises FileNotFoundError: what that means (an error, an older save) is the caller's."""
    path = Path(path)
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, pa.ArrowException) as err:
        raise InputError(f"{path}: {what}: not a readable Parquet file ({type(err).__name__}: {err}){remedy}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        expected = ", ".join(required)
        raise InputError(f"{path}: {what}: no column {missing[0]!r} (expected {expected})")
    for column, kind in required.items():
        if kind in _KINDS and not _KINDS[kind][0](frame[column].dtype):
            raise InputError(
                f"{path}: {what}: column {column!r} must hold {_KINDS[kind][1]}, not {frame[column].dtype}"
            )
    ids = {c: str for c, kind in required.items() if kind == "id"}
    return frame.astype(ids) if ids else frame
