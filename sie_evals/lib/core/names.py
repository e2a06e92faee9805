"""Names that become YAML keys and parts of file names (splits, profiles, engines, data variants):
one rule, below both the config schema and the result keys, so `--split ../../x` is refused
wherever it would enter."""

import re

from sie_evals.lib.core.errors import InputError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}"
# a variant is up to five '/'-separated segments (perf: load shape / data / engine / hardware)
VARIANT_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT}){{0,4}}$"
_VARIANT = re.compile(VARIANT_PATTERN)


def valid_name(value: object) -> bool:
    return isinstance(value, str) and bool(_NAME.match(value)) and ".." not in value


def validate_name(field: str, value: str) -> str:
    if not valid_name(value):
        raise InputError(
            f"{field} {value!r} is not a valid name: letters, digits, '.', '_' and '-' only, starting with "
            "a letter or digit (no '/', no '..', at most 64 characters)"
        )
    return value


def valid_variant(value: object) -> bool:
    return isinstance(value, str) and bool(_VARIANT.match(value)) and ".." not in value
