"""Sweep algorithms as pure, deterministic code: the workflow calls them, replay re-derives the same decisions."""
