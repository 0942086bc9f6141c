"""Startup checks of the workflow's data inputs on this machine (rules/common.smk).

A dataset whose prepared file (results/data/<name>.pt) is not there yet is prepared from its
`archive` or `root`; a missing one is named in one line before any job starts, as a missing
imported checkpoint is (Plan). A prepared file that is there already needs neither.

A prepared file that Snakemake did not write (`python -m dgkd_core prepare-data --out
results/data/synthetic.pt`, say) has no Snakemake record, so Snakemake would take it as it is,
whatever it holds. `prepared_elsewhere` compares what the file records (its name, source, and
the synthetic data's seed and sizes) with the config, so that the workflow prepares it again.
"""

from __future__ import annotations

import os
import re

from dgkd_core.experiment import paths

__all__ = ["missing_data_input", "prepared_elsewhere", "unknown_dataset", "unknown_target_dataset"]

# A target's dataset: results/data/<name>.pt or results/runs/<name>/...
_DATASET_TARGET = re.compile(rf"(?:\./)?{paths.RESULTS}/(?:data/([^/]+)\.pt|runs/([^/]+)(?:/.*)?)")

# prepare_dataset's defaults for the synthetic sizes, which a config may leave out.
_SYNTHETIC_DEFAULTS = {"synthetic_train": 5000, "synthetic_test": 1000}


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



def unknown_target_dataset(words, datasets: dict) -> str | None:
    """unknown_dataset's line for the first of `words` (command-line words) that is a target of
    a dataset the config lacks, or None."""
    for word in words:
        found = _DATASET_TARGET.fullmatch(str(word))
        if found and (line := unknown_dataset(found.group(1) or found.group(2), datasets)):
            return line
    return None


def _recorded_meta(path: str) -> dict | None:
    """The meta of prepared data file `path`, or None where it cannot be read (loading it
    later says why). Tensors only (weights_only), memory-mapped: the images are not read."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # corrupt or refused: load_prepared's business, with its own message
        return None
    meta = payload.get("meta") if isinstance(payload, dict) else None
    return meta if isinstance(meta, dict) else None


def prepared_elsewhere(name: str, identity: dict) -> str | None:
    """Why results/data/<name>.pt, where it exists, does not hold what dataset `name`'s
    identity (Plan.dataset_identity) asks for; None where it does or cannot be told."""
    path = paths.data_file(name)
    meta = _recorded_meta(path) if os.path.isfile(path) else None
    if meta is None:
        return None
    wanted = {"name": name, "source": identity["source"]}
    if identity["source"] == "synthetic":
        sizes = {**_SYNTHETIC_DEFAULTS, **(identity.get("options") or {})}
        wanted.update(seed=identity.get("seed", 0), train=sizes["synthetic_train"],
                      test=sizes["synthetic_test"])
    detail = meta.get("source_detail") or {}
    recorded = {key: meta.get(key, detail.get(key)) for key in wanted}
    differ = [f"{key} {recorded[key]!r}, the config's {wanted[key]!r}" for key in wanted
              if recorded[key] != wanted[key]]
    if not differ:
        return None
    return (f"{path} was prepared with other settings ({'; '.join(differ)}), not by this "
            "workflow: it is prepared again")
