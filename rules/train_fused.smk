# One rule per fused group (dgkd_core.experiment.fused_groups: the workflow config's `fuse`), each training its
# members in one job (dgkd_core.training.fused) to the same outputs as train_model's, one set per member.
# These rules name their outputs without wildcards, so Snakemake prefers them to train_model's
# wildcard pattern for those files. Their params are every member's own run settings, so a
# changed setting of one member reruns its group.


for group in FUSED_GROUPS:

    rule:
        name:
            group.name
        input:
            data=paths.data_file(group.runs[0].dataset),
            guides=fused_guide_checkpoints(group),
            guide_tables=fused_guide_tables(group),
        output:
            model=group.files("model.pt"),
            metrics=group.files("metrics.json"),
            history=group.files("history.csv"),
        log:
            paths.log_file("train_fused", group.name),
        benchmark:
            paths.benchmark_file("train_fused", group.name)
        conda:
            "../environment.yml"
        threads: SETTINGS["resources"]["threads"]
        resources:
            gpu_jobs=1,
            gpu=one_gpu(group.runs[0]),
            mem_mb=SETTINGS["resources"]["mem_mb"],
            runtime=SETTINGS["resources"]["runtime_minutes"][PLAN.role(group.runs[0])],
        params:
            members=group.member_dirs,
            run_settings=[semantic_settings(PLAN.run_config(run)) for run in group.runs],
            member_guides=[
                run_files(PLAN.guides(run), "model.pt") for run in group.runs
            ],
            training_code_version=TRAINING_CODE_VERSION,
            # Untracked (common.smk): what the job trains (dgkd_core.experiment.jobs).
            run_configs=untracked([PLAN.run_config(run) for run in group.runs]),
            member_guide_tables=untracked(
                [aligned_guide_tables(run) for run in group.runs]
            ),
            # Not a rerun trigger (schema: fuse_mechanism); metrics.json records it.
            mechanism=untracked(SETTINGS["fuse_mechanism"]),
        script:
            "../workflow_scripts/train_fused.py"
