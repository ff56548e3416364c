rule teacher:
    input:
        code=STAGE_CODE["teacher"],
    output:
        directory(f"{RESULTS}/{{task}}/teacher"),
    log:
        "logs/teacher/{task}.log",
    params:
        settings=stage_params("teacher"),
    threads: 2
    conda:
        "../envs/grain.yaml"
    shell:
        "grain teacher --task {wildcards.task} --log {log}"
