rule prune:
    input:
        teacher=teacher_dir,
        code=STAGE_CODE["prune"],
    output:
        pruned=directory(run_file("pruned")),
        curve=run_file("curve.csv"),
    log:
        run_log("prune"),
    params:
        settings=stage_params("prune"),
    threads: 2
    conda:
        "../envs/grain.yaml"
    shell:
        "grain prune --task {wildcards.task} --variant {wildcards.variant} --density {wildcards.density}"
        " --seed {wildcards.seed} --log {log}"
