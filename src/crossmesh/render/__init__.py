"""Pure renderers: plan → files as data, serialised canonically (sorted, stable bytes)."""
