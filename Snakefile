# The GRAIN pipeline for Snakemake: `snakemake --cores 2` (profiles: workflow/profiles/local, slurm).
# Wiring only: helpers live in workflow/rules/common.smk, one rules file per stage. Each rule runs the
# same `grain <stage>` command as the dvc.yaml stage of that name.
configfile: "params.yaml"


include: "workflow/rules/common.smk"


rule all:
    input:
        grid_files("eval.json"),
        grid_files("latency.json"),
        table_files(),
    default_target: True


include: "workflow/rules/teacher.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/compact.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/tables.smk"
