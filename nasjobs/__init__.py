"""The NAS engine: search spaces, strategies, estimators and the search loop (no Django)."""
