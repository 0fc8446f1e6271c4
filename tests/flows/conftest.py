"""Helpers for driving the flow's logic without Bytewax or services."""
