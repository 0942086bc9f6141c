"""Densely Guided Knowledge Distillation (DGKD, ICCV 2021) and its baselines.

Subpackages, lowest first: method, data, guides, training, experiment, reporting, campaign,
bench; beside them errors, device, io, schema, config, runtime and cli. docs/design.md maps
each concept to its home."""

__version__ = "0.1.0"
