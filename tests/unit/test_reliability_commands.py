"""Issue 25, item 10: the README's own commands run as written. `guide-table` needs no student
model: the table serves runs of any student."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import torch

from dgkd_core import cli
from dgkd_core.data import prepare_dataset
from dgkd_core.training.trainer import train
from helpers import run_config

REPO = Path(__file__).resolve().parents[2]


def _readme_command(start: str) -> list[str]:
    """The README's inline command that begins with `start`, as arguments (it may wrap)."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"`(" + re.escape(start) + r"[^`]*)`", text)
    assert found, f"the README no longer shows `{start} ...`"
    return shlex.split(" ".join(found.group(1).split()))


def test_readmes_guide_table_command_runs_as_written(tmp_path, monkeypatch, capsys):
    args = _readme_command("python -m dgkd_core guide-table")
    assert args[:4] == ["python", "-m", "dgkd_core", "guide-table"]
    # The README's paths, made here: its teacher folder T/ and its prepared data, on 48 images.
    monkeypatch.chdir(tmp_path)
    data_path = Path(args[args.index("--data") + 1])
    prepare_dataset("synthetic", data_path, seed=0, synthetic_train=48, synthetic_test=16)
    guide = Path(args[args.index("--guide") + 1])
    train(run_config(model="plane2", epochs=1, batch_size=16), data_path, guide.parent,
          progress=False)
    assert cli.main(args[3:]) == 0, capsys.readouterr().err
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["guide_model"] == "plane2" and record["num_images"] == 48
    table = torch.load(args[args.index("--out") + 1], weights_only=True)
    assert isinstance(table, dict)
