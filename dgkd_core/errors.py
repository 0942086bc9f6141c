"""The project's exceptions share one base, `DgkdError`: the command line prints any of them as
its one-line message. Each module defines the errors of its own concern as subclasses
(`ConfigError` in schema.py, `DataError` in data/prepared.py, `UnreadableFile` and `WriteError` in
io.py, `CampaignError`, `ReportError`, `ReproductionError`, `ImportFailed`); `TrainingError` is
here because the runtime, the guides and the trainer all raise it."""

from __future__ import annotations


class DgkdError(Exception):
    """A failure the project explains in its message: bad input, a missing or stale file, a run
    that cannot go on."""


class TrainingError(DgkdError, RuntimeError):
    """Training cannot go on (bad guide, non-finite loss, ...). No final output is written."""
