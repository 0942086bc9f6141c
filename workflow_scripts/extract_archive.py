"""Adapter: rule extract_archive -> dgkd_core.data.extract_archive."""

import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "a", buffering=1)

from dgkd_core.data import DataError, extract_archive

# The archive is unpacked only to be cached: it may unpack to no more than the cache's limit.
options = snakemake.config["datasets"][snakemake.wildcards.dataset].get("options") or {}
try:
    n_files = extract_archive(snakemake.input[0], snakemake.output[0],
                              max_bytes=options.get("max_cached_bytes"))
except DataError as err:
    print(f"error: {err}")  # one line in the job log; the message says what to change
    sys.exit(1)
print(f"unpacked {n_files} files from {snakemake.input[0]} into {snakemake.output[0]}")
