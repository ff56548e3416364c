rule compact:
    input:
        pruned=run_file("pruned"),
        code=STAGE_CODE["compact"],
    output:
        directory(run_file("compact")),
    log:
        run_log("compact"),
    params:
        settings=stage_params("compact"),
    conda:
        "../envs/grain.yaml"
    shell:
        "grain compact --task {wildcards.task} --variant {wildcards.variant} --density {wildcards.density}"
        " --seed {wildcards.seed} --log {log}"
