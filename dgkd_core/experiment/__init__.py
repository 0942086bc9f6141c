"""A workflow config as an experiment: the plan of runs (plan.py), their output paths
(paths.py), which guides get tables (table_plan.py), which runs train fused (fused_groups.py)
and models imported from elsewhere (importing.py)."""
