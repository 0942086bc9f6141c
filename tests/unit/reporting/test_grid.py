"""The λ × T grid's report (dgkd_core.reporting.grid): chosen on validation only, the test
top-1 reported for the chosen setting alone."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from dgkd_core.reporting import grid
from dgkd_core.reporting.tables import ReportError


def runs(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["lam", "temperature", "seed", "val_top1_last",
                                       "top1_last"])


# (λ, T): validation favours (0.5, 4); test favours (0.9, 2) by far.
RUNS = runs([(0.5, 4.0, 1, 80.0, 70.0), (0.5, 4.0, 2, 82.0, 72.0),
             (0.9, 2.0, 1, 78.0, 95.0), (0.9, 2.0, 2, 79.0, 96.0),
             (0.5, 2.0, 1, 60.0, 60.0), (0.5, 2.0, 2, 61.0, 61.0),
             (0.9, 4.0, 1, 70.0, 90.0), (0.9, 4.0, 2, 71.0, 91.0)])


def test_selection_uses_validation_only():
    assert grid.select_on_validation(RUNS) == (0.5, 4.0)
    # Changing every test number changes nothing; changing validation does.
    shuffled = RUNS.assign(top1_last=RUNS["top1_last"].iloc[::-1].to_numpy())
    assert grid.select_on_validation(shuffled) == (0.5, 4.0)
    assert grid.select_on_validation(RUNS.assign(val_top1_last=RUNS["top1_last"])) == (0.9, 2.0)


def test_ties_go_to_the_smaller_lambda_then_temperature():
    tied = runs([(0.9, 1.0, 1, 50.0, 0.0), (0.1, 5.0, 1, 50.0, 0.0), (0.1, 2.0, 1, 50.0, 0.0)])
    assert grid.select_on_validation(tied) == (0.1, 2.0)


def test_the_table_shows_the_test_top1_of_the_chosen_setting_once(tmp_path):
    table = grid.grid_table(RUNS)
    assert len(table) == 4 and table["selected"].sum() == 1
    chosen = table[table["selected"]].iloc[0]
    assert (chosen.lam, chosen.temperature) == (0.5, 4.0)
    assert chosen.val_top1_mean == 81.0 and chosen.test_top1_mean == 71.0
    assert chosen.test_top1_std == pytest.approx(math.sqrt(2.0))
    assert table.loc[~table["selected"], "test_top1_mean"].isna().all()
    out = tmp_path / "grid.png"
    grid.heatmap_figure(table, [out])
    assert out.stat().st_size > 0


def test_grid_runs_reads_the_settings_and_refuses_runs_without_validation(tmp_path):
    base = {"top1_last": 70.0, "top5_last": 90.0, "top1_best": 71.0, "best_epoch": 2,
            "epochs": 2, "wall_time_s": 1.0, "seed": 3,
            "config": {"loss": {"lam": 0.5, "temperature": 4.0}}}
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps({**base, "val_top1_last": 80.0}))
    bad.write_text(json.dumps(base))
    row = grid.grid_runs([good]).iloc[0]
    assert (row.lam, row.temperature, row.val_top1_last, row.top1_last) == (0.5, 4.0, 80.0, 70.0)
    with pytest.raises(ReportError, match="validation_images > 0"):
        grid.grid_runs([bad])
    with pytest.raises(ReportError, match="no runs"):
        grid.select_on_validation(grid.grid_runs([]))
