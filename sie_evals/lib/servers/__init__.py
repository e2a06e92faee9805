"""Inference servers the harness provisions, starts and stops itself (sie, infinity, tei)."""
