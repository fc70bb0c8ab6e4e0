# Masters: Masking Teacher and Reinforcing Student, as a reproducible workflow.
#
#   snakemake --cores 2                                   # embedded tiny world (CPU, no downloads)
#   snakemake --cores 2 --configfile configs/smoke.yaml   # the CI smoke scale
#   snakemake --profile slurm                             # on a SLURM cluster (slurm/, README)
#
# Rules are thin: each calls the `masters` command (masters/cli.py); the logic lives in masters/.


from pathlib import Path


configfile: Path(workflow.basedir) / "config.yaml"


include: "rules/common.smk"
include: "rules/world.smk"
include: "rules/inputs.smk"
include: "rules/mask.smk"
include: "rules/generate.smk"
include: "rules/judge.smk"
include: "rules/reward.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/tables.smk"
include: "rules/figures.smk"


report: "report/workflow.rst"


# Local runs: the jobs' `masters` commands fork from one warm process (masters/worker.py).
WORKER = []


onstart:
    warn_missing_judge_key()
    if config["warm_worker"] and workflow.local_exec:
        WORKER.extend(worker.start(log=f"{RESULTS}/logs/worker.log"))


onsuccess:
    if WORKER:
        worker.stop(*WORKER)


onerror:
    if WORKER:
        worker.stop(*WORKER)


rule all:
    default_target: True
    input:
        world_outputs(),
        table_outputs(),
        figure_outputs(),
