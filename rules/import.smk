# Teachers and TAs trained elsewhere (chains.<name>.teacher_checkpoint, .ta_checkpoints): each
# imported run gets the outputs a trained one has (dgkd_core.experiment.importing), at its usual path, and
# the runs it guides take its model.pt as they take a trained one. Imported runs match only this
# rule and trained runs only train_model: their `lineage` constraints exclude each other
# (dgkd_core.experiment.paths.lineage_constraint on Plan.imported_lineages). The rerun param is the file's
# content: new content reruns the import and what it guides; moving the file reruns nothing.


rule import_model:
    input:
        data=paths.data_file("{dataset}"),
    output:
        model=paths.run_file(*RUN_WILDCARDS, "model.pt"),
        metrics=paths.run_file(*RUN_WILDCARDS, "metrics.json"),
        history=paths.run_file(*RUN_WILDCARDS, "history.csv"),
    log:
        paths.import_log(*RUN_WILDCARDS),
    wildcard_constraints:
        lineage=IMPORTED_LINEAGE,
    conda:
        "../environment.yml"
    threads: SETTINGS["resources"]["threads"]
    # One evaluation of the test split, on the device the run config names (a GPU if any).
    resources:
        gpu_jobs=1,
        mem_mb=SETTINGS["resources"]["mem_mb"],
    params:
        source_sha256=get_import_sha256,
        # Untracked (common.smk): the file, the key naming it, the run config.
        source=get_import_source,
        source_key=get_import_key,
        run_config=get_import_run_config,
    script:
        "../workflow_scripts/import_model.py"
