"""Adapter: rule extract_archive -> dgkd_core.data.extract_archive."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

from dgkd_core.data import DataError, extract_archive

try:
    n_files = extract_archive(snakemake.input[0], snakemake.output[0])
except DataError as err:
    print(f"error: {err}")  # one line in the job log; the message says what to change
    sys.exit(1)
print(f"unpacked {n_files} files from {snakemake.input[0]} into {snakemake.output[0]}")
