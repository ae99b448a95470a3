"""Workflows: deterministic, replay-safe, no I/O. They import only types and pure helpers."""
