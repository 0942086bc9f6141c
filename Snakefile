# DGKD (ICCV 2021) and its baselines: teacher -> TAs -> student, to results/table1.csv.
# Layout and contracts: docs/design.md; usage: README.md.
import os

from snakemake.utils import min_version

min_version("9.0")


# config/config.yaml (the paper's Table 1) unless --configfile names other files, which then
# replace it rather than being merged into it.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/guide_table.smk"
include: "rules/train.smk"
include: "rules/train_fused.smk"
include: "rules/import.smk"
include: "rules/aggregate.smk"


rule all:
    default_target: True
    input:
        all_targets(),
