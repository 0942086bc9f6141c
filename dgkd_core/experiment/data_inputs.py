"""Startup checks of the workflow's data inputs on this machine (rules/common.smk).

A dataset whose prepared file (results/data/<name>.pt) is not there yet is prepared from its
`archive` or `root`; a missing one is named in one line before any job starts, as a missing
imported checkpoint is (Plan). A prepared file that is there already needs neither.
"""

from __future__ import annotations

import os

from dgkd_core.experiment import paths

__all__ = ["missing_data_input", "unknown_dataset"]


def _where() -> str:
    return f"relative paths are read from the working directory, {os.getcwd()}"


def missing_data_input(datasets: dict) -> str | None:
    """One line naming the first dataset whose archive or root is missing where its prepared
    file still has to be made, or None. datasets: the config's `datasets`, defaults filled."""
    for name, spec in datasets.items():
        if os.path.exists(paths.data_file(name)):
            continue
        archive, root = spec.get("archive"), spec.get("root")
        if archive:
            if not os.path.isfile(archive):
                return (f"datasets.{name}.archive: there is no file {archive} ({_where()}); "
                        "give the path of the .tar")
        elif root and not os.path.isdir(root):
            if spec["source"] in ("cifar10", "cifar100") and spec.get("download"):
                continue  # torchvision downloads into it
            fix = ("set download: true to fetch it" if spec["source"] != "imagefolder"
                   else "give the folder holding train/<class>/ and test/<class>/")
            return f"datasets.{name}.root: there is no folder {root} ({_where()}); {fix}"
    return None


def unknown_dataset(name: str, datasets: dict) -> str | None:
    """One line for a target of dataset `name` that the config does not have, or None."""
    if name in datasets:
        return None
    return (f"dataset '{name}' (asked for by a target under results/data/ or results/runs/) is "
            f"not in the config's datasets ({', '.join(datasets)}); add it under datasets or "
            "ask for one of those")

