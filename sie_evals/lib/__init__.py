"""Pure, Dagster-free logic. Everything here is callable and testable without an instance."""
