"""Adapter: rule prepare_data -> dgkd_core.data.prepare_dataset."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

from dgkd_core.cli import setup_logging
from dgkd_core.data import prepare_dataset

setup_logging(snakemake.log[0])
name = snakemake.wildcards.dataset
identity = snakemake.params.dataset
# Where the files are is not part of the dataset's identity (params), so it is read from config.
spec = snakemake.config["datasets"][name]
root = snakemake.input[0] if snakemake.input else spec.get("root")
meta = prepare_dataset(
    identity["source"],
    snakemake.output[0],
    root=root,
    download=spec.get("download", False),
    name=name,
    seed=identity["seed"],
    resize=identity["resize"],
    workers=snakemake.threads,
    **identity["options"],
)
print(f"prepared {name}: {meta['num_classes']} classes, source {meta['source']}")
