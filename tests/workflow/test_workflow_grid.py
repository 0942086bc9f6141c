"""The grid ablation (`ablations.grid`): the dry run plans one run per (λ, T, seed), each with
its validation split, and the tiny config runs it end to end, choosing on validation."""

from __future__ import annotations

import pandas as pd
import pytest

from dgkd_core.experiment import paths
from dgkd_core.experiment.plan import Plan
from dgkd_core.schema import ConfigError
from test_workflow import dry_run, snakemake, tiny

CHAIN = {"plain": {"teacher": "plane4", "tas": ["plane3"], "student": "plane2"}}
GRID = {"dataset": "synthetic", "chain": "plain", "method": "dgkd", "lams": [0.3, 0.7],
        "temperatures": [2, 4], "validation_images": 32, "seeds": [1]}


def grid_config(**grid) -> dict:
    return tiny(chains=CHAIN, methods=["dgkd"], seeds=[1], ablations={"grid": {**GRID, **grid}})


def test_the_grid_plans_one_run_per_setting_and_seed_with_its_split():
    plan = Plan(grid_config(seeds=[1, 2]))
    runs = plan.ablation_runs("grid")
    assert len(runs) == 2 * 2 * 2
    assert {r.grid for r in runs} == {(lam, t, 32) for lam in (0.3, 0.7) for t in (2.0, 4.0)}
    run = next(r for r in runs if r.grid == (0.7, 2.0, 32) and r.seed == 2)
    assert run.dir.endswith("seed2/dgkd@lam0.7_T2_val32/plane4-plane3-plane2")
    assert paths.run_from_path(run.file("metrics.json")) == run
    cfg = plan.run_config(run)
    assert cfg["loss"]["lam"] == 0.7 and cfg["loss"]["temperature"] == 2.0
    assert cfg["validation_images"] == 32
    # Its guides are the usual teacher and TA, without a split of their own.
    assert all(g.grid is None for g in plan.guides(run))
    assert plan.run_config(plan.guides(run)[0])["validation_images"] == 0


def test_a_grid_on_an_unknown_chain_names_the_key():
    with pytest.raises(ConfigError, match="ablations.grid.chain"):
        Plan(grid_config(chain="nope"))


def test_the_dry_run_plans_the_grid(tmp_path):
    run = dry_run(tmp_path, "results/ablations/grid.csv", config=grid_config())
    grid_jobs = {r for r in run.runs() if "@" in r}
    assert grid_jobs == {f"seed1/dgkd@lam{lam:g}_T{t:g}_val32/plane4-plane3-plane2"
                         for lam in (0.3, 0.7) for t in (2, 4)}
    assert run.count("train_model") == 4 + 2  # the grid, then the teacher and the TA
    assert run.count("ablation_grid") == 1


def test_the_grid_end_to_end_chooses_on_validation(tmp_path):
    # A flag first: a target right after --configfile would be read as a config file.
    proc = snakemake(tmp_path, "-p", "results/ablations/grid.csv", config=grid_config())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_csv(tmp_path / "results" / "ablations" / "grid.csv")
    assert len(table) == 4 and table["selected"].sum() == 1
    chosen = table[table["selected"]].iloc[0]
    assert chosen.val_top1_mean == table["val_top1_mean"].max()
    assert table.loc[~table["selected"], "test_top1_mean"].isna().all()
    assert (tmp_path / "results" / "figures" / "ablation_grid.png").stat().st_size > 0
    assert "**yes**" in (tmp_path / "results" / "ablations" / "grid.md").read_text()
