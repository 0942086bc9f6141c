"""Results as tables (tables.py), figures (plots.py), publication tables (publish.py), the
reproduction report (reproduction.py) and the published numbers they compare with
(reference.py)."""
