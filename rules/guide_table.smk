# A guide's logits for every crop-and-flip view of the training set (dgkd_core.guides.logit_tables),
# built once where its users would otherwise run it for more than 162 epochs together
# (dgkd_core.experiment.table_plan; the `guide_tables` setting). Its users take the table as an input in
# place of running the guide; it is removed once the last of them has trained, unless
# keep_guide_tables. A retrained guide or new data rebuilds it (its inputs); so do new
# normalisation or fast-path settings of its users, or new training code (its params).


rule guide_table:
    input:
        model=paths.run_file(*RUN_WILDCARDS, "model.pt"),
        data=paths.data_file("{dataset}"),
    output:
        table=guide_table_output(paths.run_file(*RUN_WILDCARDS, paths.GUIDE_TABLE_FILE)),
    log:
        paths.guide_table_log(*RUN_WILDCARDS),
    benchmark:
        paths.guide_table_benchmark(*RUN_WILDCARDS)
    conda:
        "../environment.yml"
    threads: SETTINGS["resources"]["threads"]
    # The guide's forward pass over 162 views of every training image: a GPU job like training.
    resources:
        gpu_jobs=1,
        gpu=get_one_gpu,
        mem_mb=SETTINGS["resources"]["mem_mb"],
        runtime=get_runtime_minutes,
    params:
        table_settings=get_table_settings,
        training_code_version=TRAINING_CODE_VERSION,
        table_config=get_table_config,  # untracked (common.smk)
    script:
        "../workflow_scripts/guide_table.py"
