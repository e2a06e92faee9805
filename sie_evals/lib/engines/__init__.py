"""Engines: one interface for every compute source (local, sie, infinity, tei)."""

from sie_evals.lib.engines.base import EmbedKind, Engine, EngineInfo
from sie_evals.lib.engines.registry import create_engine

__all__ = ["EmbedKind", "Engine", "EngineInfo", "create_engine"]
