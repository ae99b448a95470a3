"""Worked examples of custom Ray Train loops that ttrain runs with `kind: custom` (see the README's "Bring your own
training loop")."""
