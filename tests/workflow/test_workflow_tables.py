"""The workflow with guide tables (rules/guide_table.smk, dgkd_core.experiment.table_plan): which guides
get a table, that their users take it in place of the guide's forward pass, that it is removed
after its last user, and what reruns when tables are switched off."""

from __future__ import annotations

import json

import pytest

from dgkd_core.experiment.plan import Plan
from dgkd_core.schema import ConfigError
from test_workflow import TINY, dry_run, snakemake, tiny

CHAIN = {"plain": {"teacher": "plane4", "tas": ["plane3"], "student": "plane2"}}
RUNS = "results/runs/synthetic/seed1"


def small(**changes) -> dict:
    """Teacher -> one TA -> student, KD and DGKD, one seed, 64 training images."""
    config = tiny(chains=CHAIN, methods=["kd", "dgkd"], seeds=[1], ablations={}, **changes)
    config["datasets"]["synthetic"]["options"] = {"synthetic_train": 64, "synthetic_test": 64}
    config["hyperparameters"]["defaults"].update(batch_size=16, logging={"tensorboard": False})
    return config


def test_auto_gives_tables_where_users_train_more_than_162_epochs():
    def tabled(epochs, mode="auto"):
        config = small(guide_tables=mode)
        config["hyperparameters"]["defaults"]["epochs"] = epochs
        plan = Plan(config)
        return sorted(r.dir.split("seed1/")[1] for r in plan.runs() if plan.uses_table(r))

    # The teacher guides the TA and both students (3 users); the TA, the DGKD student only.
    assert tabled(54) == []  # 3 x 54 = 162: not more
    assert tabled(55) == ["nokd/plane4"]
    assert tabled(163) == ["kd/plane4-plane3", "nokd/plane4"]
    assert tabled(1, True) == ["kd/plane4-plane3", "nokd/plane4"]
    assert tabled(500, False) == []
    no_augment = small(guide_tables=True)
    no_augment["hyperparameters"]["defaults"]["augment"] = False
    assert not any(Plan(no_augment).uses_table(r) for r in Plan(no_augment).runs())


@pytest.mark.parametrize("spec, cached", [
    ({"source": "imagefolder", "archive": "jpegs.tar"}, True),  # unpacked, cached or refused
    ({"source": "imagefolder", "root": "jpegs"}, False),  # streamed above the cache limits
    ({"source": "imagefolder", "root": "jpegs", "options": {"recipe": "imagenet"}}, False),
])
def test_image_folders_get_tables_where_their_data_is_always_cached(spec, cached):
    """The CIFAR-10 JPEG copy is given as an archive: prepared into the cached tensor, so its
    runs get tables as CIFAR's do; a folder read in place may be streamed and gets none."""
    for mode, epochs in (("auto", 163), (True, 1)):
        config = small(guide_tables=mode)
        config["hyperparameters"]["defaults"]["epochs"] = epochs
        config["datasets"]["synthetic"] = spec  # the runs' paths keep the dataset's name
        plan = Plan(config)
        tabled = sorted(r.dir.split("seed1/")[1] for r in plan.runs() if plan.uses_table(r))
        assert tabled == (["kd/plane4-plane3", "nokd/plane4"] if cached else []), mode


def test_paper_config_plans_tables_and_false_plans_none(tmp_path):
    assert dry_run(tmp_path, "results/table1.csv", configfiles=()).count("guide_table") > 0
    config = small(guide_tables=False)
    config["hyperparameters"]["defaults"]["epochs"] = 160
    assert dry_run(tmp_path, config=config).count("guide_table") == 0
    config["guide_tables"] = "auto"
    run = dry_run(tmp_path, config=config)
    # The teacher has 3 users (3 x 160 epochs); the TA one (160 < 162): it runs inline.
    assert run.count("guide_table") == 1 and run.count("train_model") == 4


@pytest.mark.slow
def test_tables_are_used_then_removed_and_switching_off_reruns_their_users(tmp_path):
    proc = snakemake(tmp_path, config=small(guide_tables=True))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    used = {run: json.loads((tmp_path / RUNS / run / "metrics.json").read_text())["guide_tables"]
            for run in ("nokd/plane4", "kd/plane4-plane3", "kd/plane4-plane2",
                        "dgkd/plane4-plane3-plane2")}
    assert used == {"nokd/plane4": [], "kd/plane4-plane3": [True], "kd/plane4-plane2": [True],
                    "dgkd/plane4-plane3-plane2": [True, True]}
    assert not list((tmp_path / "results").rglob("guide_table.pt")), "a table was kept"
    assert dry_run(tmp_path, config=small(guide_tables=True)).nothing_to_do
    # Inline guides compute the same logits to rounding, but not bit for bit: their users rerun.
    run = dry_run(tmp_path, config=small(guide_tables=False))
    assert run.runs() == {"seed1/kd/plane4-plane3", "seed1/kd/plane4-plane2",
                          "seed1/dgkd/plane4-plane3-plane2"}
    assert run.count("guide_table") == 0


def test_keep_guide_tables_keeps_them(tmp_path):
    run = dry_run(tmp_path, config=small(guide_tables=True, keep_guide_tables=True))
    assert "Would remove temporary output" not in run.text
    run = dry_run(tmp_path, config=small(guide_tables=True))
    assert f"Would remove temporary output {RUNS}/nokd/plane4/guide_table.pt" in run.text


def test_text_false_from_the_command_line_gets_a_hint():
    with pytest.raises(ConfigError, match="write --config guide_tables=False"):
        Plan(small(guide_tables="false"))


def test_fused_groups_take_their_members_tables(tmp_path):
    run = dry_run(tmp_path, config=small(guide_tables=True, fuse=True))
    fused = [rule for rule in run.rules if rule.startswith("train_fused")]
    # the teacher and the TA train alone; the two plane2 students as one group, from both tables
    assert run.count("guide_table") == 2 and run.count("train_model") == 2 and len(fused) == 1
    group = run.text.split(f"rule {fused[0]}:")[1].split("\nrule ")[0]
    assert f"{RUNS}/kd/plane4-plane3/guide_table.pt" in group.split("output:")[0]
    assert f"{RUNS}/nokd/plane4/guide_table.pt" in group.split("output:")[0]
    # on SLURM, the group's job and each table's ask for a GPU (the profile sets none)
    assert "gpu=1" in group
    table_job = run.text.split("rule guide_table:")[1].split("\nrule ")[0]
    assert "gpu=1" in table_job
