"""Adapter: rule prepare_data -> dgkd_core.data.prepare_dataset."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

from dgkd_core.cli import setup_logging
from dgkd_core.data import DataError, prepare_dataset

setup_logging(snakemake.log[0])
name = snakemake.wildcards.dataset
identity = snakemake.params.dataset
# Where the files are is not part of the dataset's identity (params), so it is read from config.
spec = snakemake.config["datasets"][name]
# An input is the unpacked archive, a temp() output that Snakemake deletes after this job.
unpacked = bool(snakemake.input)
try:
    meta = prepare_dataset(
        identity["source"],
        snakemake.output[0],
        root=snakemake.input[0] if unpacked else spec.get("root"),
        download=spec.get("download", False),
        name=name,
        seed=identity["seed"],
        resize=identity["resize"],
        workers=snakemake.threads,
        root_is_temporary=unpacked,
        **identity["options"],
    )
except DataError as err:
    print(f"error: {err}")  # one line in the job log; the message says what to change
    sys.exit(1)
print(f"prepared {name}: {meta['num_classes']} classes, source {meta['source']}")
