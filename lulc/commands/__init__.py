"""Command groups of the `lulc` CLI, one module per group."""
