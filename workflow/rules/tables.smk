rule tables:
    input:
        evals=grid_files("eval.json"),
        latencies=grid_files("latency.json"),
        code=STAGE_CODE["tables"],
    output:
        tables=table_files(),
        figures=directory("results/figures"),
    log:
        "logs/tables.log",
    params:
        settings=stage_params("tables"),
    conda:
        "../envs/grain.yaml"
    shell:
        "grain tables --log {log}"
