"""Kappa feature pipeline: one Bytewax dataflow for live runs and replays."""

__version__ = "0.1.0"
