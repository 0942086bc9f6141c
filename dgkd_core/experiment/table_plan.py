"""Which guides get a table (dgkd_core.guides.logit_tables), and which of the runs they guide use it.

The workflow setting `guide_tables` decides: `false` runs every guide inline, as before; `true`
gives every guide a table that some run it guides can use; `auto` gives one where it pays: a
table costs `views_per_image` (162) forward passes per training image, once, and saves one per
image and epoch of each run that uses it, so it pays when those runs train for more than 162
epochs together (the teacher of Table 1's chain guides five runs of 160 epochs each).

A run can use a table when it trains on data that is always prepared into the cached tensor
(`dgkd_core.data.always_cached`: cifar10, cifar100, synthetic, and an image folder given as an
archive; one read in place may be streamed, so it gets none) with the random crop and flip
(`augment`), and when its normalisation, fast path and device are those the table is built
with, which are those of the first such run in plan order. Other runs of the same guide run it
inline.
"""

from __future__ import annotations

import json

from dgkd_core.data import CROP_PAD, always_cached, views_per_image
from dgkd_core.experiment.paths import Run

__all__ = ["dataset_is_cached", "plan_guide_tables"]


def _table_key(cfg: dict) -> str:
    """What a table's logits depend on besides the guide and the data."""
    return json.dumps([cfg["normalize"], cfg["fast"], cfg["device"]], sort_keys=True)


def dataset_is_cached(spec: dict) -> bool:
    """Whether a workflow config's dataset (`datasets.<name>`, defaults filled in) is always
    prepared into the cached uint8 tensor. One given as an archive is unpacked for preparing
    only, and removed after (rules/data.smk): its root is temporary."""
    recipe = (spec.get("options") or {}).get("recipe")
    return always_cached(spec["source"], root_is_temporary=bool(spec.get("archive")),
                         **({"recipe": recipe} if recipe else {}))


def plan_guide_tables(runs: list[Run], guides_of, run_config, datasets: dict, mode
                      ) -> dict[Run, list[Run]]:
    """guide run -> the runs that look its logits up in its table (plan order; the first one's
    run config builds the table). Guides left out run inline everywhere.

    runs: every run of the plan, guides first; guides_of(run): its guide runs; run_config(run):
    its resolved run config; datasets: the workflow config's `datasets` (name -> spec);
    mode: auto/true/false.
    """
    if mode is False:
        return {}
    configs: dict[Run, dict] = {}
    users: dict[Run, list[Run]] = {}
    for run in runs:
        guides = guides_of(run)
        if not guides or not dataset_is_cached(datasets[run.dataset]):
            continue
        configs[run] = run_config(run)
        # A table is indexed by the whole training split; a validation run trains on a subset.
        if configs[run]["augment"] and not configs[run].get("validation_images"):
            for guide in guides:
                users.setdefault(guide, []).append(run)
    tables = {}
    for guide, candidates in users.items():
        key = _table_key(configs[candidates[0]])
        fitting = [r for r in candidates if _table_key(configs[r]) == key]
        epochs = sum(configs[r]["epochs"] for r in fitting)
        if mode is True or epochs > views_per_image(CROP_PAD):
            tables[guide] = fitting
    return tables
