"""Engines: one interface for every compute source; which sources exist is the table in
lib/core/sources.py, and `create_engine(source, model, profile, EngineOptions(...))` builds a row's engine."""

from sie_evals.lib.engines.base import EmbedKind, Engine, EngineInfo
from sie_evals.lib.engines.options import EngineOptions
from sie_evals.lib.engines.registry import create_engine

__all__ = ["EmbedKind", "Engine", "EngineInfo", "EngineOptions", "create_engine"]
