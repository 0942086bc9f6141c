"""The project's exceptions share one base, `DgkdError`: the command line prints any of them as
its one-line message. Each module defines the errors of its own concern as subclasses
(`DataError` in data/prepared.py, `UnreadableFile` and `WriteError` in
io.py, `CampaignError`, `ReportError`, `ReproductionError`, `ImportFailed`); `ConfigError` and
`TrainingError` are here because modules of every layer raise them (the YAML reader in io.py,
the schema, the runtime, the guides, the trainer)."""

from __future__ import annotations


class DgkdError(Exception):
    """A failure the project explains in its message: bad input, a missing or stale file, a run
    that cannot go on."""


class ConfigError(DgkdError, ValueError):
    """A config value is missing or outside its allowed range; the message names the key."""


class TrainingError(DgkdError, RuntimeError):
    """Training cannot go on (bad guide, non-finite loss, ...). No final output is written."""
