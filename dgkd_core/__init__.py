"""Densely Guided Knowledge Distillation (DGKD, ICCV 2021) and its baselines.

Modules: models (the registry), losses, data, config, train, evaluate, paths, report, plots,
bench. See docs/design.md for where each concept lives."""

__version__ = "0.1.0"
