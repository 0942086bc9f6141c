"""Snakemake stops at startup with one line for a missing data input or an unknown dataset
target (rules/common.smk, dgkd_core/experiment/data_inputs.py)."""

from __future__ import annotations

from test_workflow import snakemake, tiny


def test_a_missing_root_stops_snakemake_before_any_job(tmp_path):
    config = tiny(datasets={"synthetic": {"source": "imagefolder", "root": "no/such/folder"}})
    proc = snakemake(tmp_path, "-n", config=config)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Missing input: datasets.synthetic.root: there is no folder no/such/folder" in out
    assert "MissingInputException" not in out


def test_a_target_of_a_dataset_not_in_the_config_names_the_configured_ones(tmp_path):
    proc = snakemake(tmp_path, "-n", "results/data/nope.pt", config=tiny())
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "dataset 'nope'" in out and "not in the config's datasets (synthetic)" in out
    assert "KeyError" not in out and "InputFunctionException" not in out


def test_a_data_file_the_workflow_did_not_prepare_is_prepared_again(tmp_path):
    """The README's library example once wrote results/data/synthetic.pt with other sizes."""
    from dgkd_core.data import prepare_dataset

    data = tmp_path / "results" / "data" / "synthetic.pt"
    prepare_dataset("synthetic", data, seed=0, synthetic_train=40, synthetic_test=20)
    dry = snakemake(tmp_path, "-n", "results/data/synthetic.pt", config=tiny())
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out
    assert "was prepared with other settings (train 40, the config's 256" in out
    assert data.exists()  # a dry run changes no file
    proc = snakemake(tmp_path, "-p", "results/data/synthetic.pt", config=tiny())  # -p: ends --configfile
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from dgkd_core.data import load_prepared
    assert load_prepared(data).meta["num_train"] == 256
