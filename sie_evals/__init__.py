"""sie-evals: benchmark-driven development for text-embedding models and inference servers."""

__version__ = "0.1.0"
