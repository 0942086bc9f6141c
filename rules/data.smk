# Data: an archive unpacked (if the dataset is given as one), then one prepared tensor file per
# dataset. Both run where Snakemake runs (on a cluster: the login node, which has the internet).


localrules:
    extract_archive,
    prepare_data,


rule extract_archive:
    input:
        get_dataset_archive,
    output:
        temp(directory(paths.extracted_dir("{dataset}"))),
    log:
        paths.log_file("extract_archive", "{dataset}"),
    conda:
        "../environment.yml"
    # In Python, not `tar -xf`: links, devices and paths out of the folder are refused (GNU tar
    # unpacks symlinks, which preparing then follows), and the folder appears only when complete.
    script:
        "../workflow_scripts/extract_archive.py"


rule prepare_data:
    input:
        get_prepare_input,
    output:
        paths.data_file("{dataset}"),
    log:
        paths.log_file("prepare_data", "{dataset}"),
    benchmark:
        paths.benchmark_file("prepare_data", "{dataset}")
    conda:
        "../environment.yml"
    threads: 4
    params:
        dataset=get_dataset_identity,
    script:
        "../workflow_scripts/prepare_data.py"
