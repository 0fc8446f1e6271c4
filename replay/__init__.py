"""Backfill by topic replay: the same dataflow over a bounded range of the log."""
