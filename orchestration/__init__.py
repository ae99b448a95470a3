"""Everything Temporal: types, workflows, activities, workers, client helpers and the `ttrain` CLI."""
