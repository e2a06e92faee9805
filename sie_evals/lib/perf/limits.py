"""The accepted range of every load-size setting (rate, duration, in-flight cap), shared by the CLI's
LoadSpec and the loadtest scenario so both refuse the same values with the same words.

Bounds: a rate above a million requests/s is beyond what one Python generator can offer (its
dispatcher hands over at most some 10^5 requests/s), and a trial over 24 h is a typo, not a plan.
The in-flight cap is a thread per request in flight for the thread generator (and a connection each
for the HTTP one): thousands of them exhaust a small VM."""

import math

MIN_RATE_PER_S = 0.001
MAX_RATE_PER_S = 1_000_000.0
MAX_DURATION_S = 24 * 3600.0
MAX_IN_FLIGHT = 1024


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 1 and float(x).is_integer() else f"{x:g}"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def rate_problem(value: object) -> str | None:
    """Why `value` is not an accepted request rate (None when it is)."""
    v = _number(value)
    if v is None or not math.isfinite(v) or not MIN_RATE_PER_S <= v <= MAX_RATE_PER_S:
        return f"must be from {_fmt(MIN_RATE_PER_S)} to {_fmt(MAX_RATE_PER_S)} requests/s, got {value!r}"
    return None


def duration_problem(value: object, allow_zero: bool = False) -> str | None:
    """Why `value` is not an accepted duration in seconds (None when it is)."""
    v = _number(value)
    low_ok = v is not None and (v >= 0 if allow_zero else v > 0)
    if v is None or not math.isfinite(v) or not low_ok or v > MAX_DURATION_S:
        low = "from 0" if allow_zero else "more than 0"
        return f"must be {low} and at most {_fmt(MAX_DURATION_S)} s (24 h), got {value!r}"
    return None


def in_flight_problem(value: object) -> str | None:
    """Why `value` is not an accepted number of concurrent requests (None when it is)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IN_FLIGHT:
        return f"must be an integer from 1 to {MAX_IN_FLIGHT}, got {value!r}"
    return None
