# One rule trains every model, from its guides' checkpoints (dgkd_core.experiment.plan: Plan.guides) and,
# where the plan says so, their guide tables (rules/guide_table.smk).
# Its params are this job's own resolved run config (but for the settings that cannot change a
# result: dgkd_core.config.semantic_settings) and TRAINING_CODE_VERSION, so a changed setting
# reruns exactly the jobs it reaches, and a change in dgkd_core's training maths
# (a bumped TRAINING_CODE_VERSION) reruns every training job.


rule train_model:
    input:
        data=paths.data_file("{dataset}"),
        guides=get_guide_checkpoints,
        guide_tables=get_guide_tables,
    output:
        model=paths.run_file(*RUN_WILDCARDS, "model.pt"),
        metrics=paths.run_file(*RUN_WILDCARDS, "metrics.json"),
        history=paths.run_file(*RUN_WILDCARDS, "history.csv"),
    log:
        paths.train_log(*RUN_WILDCARDS),
    benchmark:
        paths.train_benchmark(*RUN_WILDCARDS)
    # Imported runs are rule import_model's (rules/import.smk).
    wildcard_constraints:
        lineage=TRAINED_LINEAGE,
    conda:
        "../environment.yml"
    threads: SETTINGS["resources"]["threads"]
    # gpu, tasks, tasks_per_gpu, mpi: from resources.gpus_per_job (dgkd_core/training/launch.py). N > 1:
    # N GPUs and N tasks, and the job's adapter starts the N ranks (srun, or torchrun locally).
    resources:
        gpu_jobs=1,
        mem_mb=SETTINGS["resources"]["mem_mb"],
        runtime=get_runtime_minutes,
        gpu=get_job_resource("gpu"),
        tasks=get_job_resource("tasks"),
        tasks_per_gpu=get_job_resource("tasks_per_gpu"),
        mpi=get_job_resource("mpi"),
    params:
        run_settings=get_run_settings,
        training_code_version=TRAINING_CODE_VERSION,
        # Untracked (common.smk): what the job trains, per member (dgkd_core.experiment.jobs).
        run_configs=get_run_configs,
        member_guides=get_member_guides,
        member_guide_tables=get_member_guide_tables,
    script:
        "../workflow_scripts/train_model.py"
