"""The names of result sources. Compute sources embed texts; reference sources are read, not computed."""

COMPUTE_SOURCES: tuple[str, ...] = ("local", "sie", "infinity", "tei", "openai", "fastembed")
REFERENCE_SOURCES: tuple[str, ...] = ("benchmark", "targets", "measurements")
ALL_SOURCES: tuple[str, ...] = COMPUTE_SOURCES + REFERENCE_SOURCES
