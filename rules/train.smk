# Offline stage-by-stage training of one (student, experiment, seed) (METHOD.md §6-§7).
# Resumable: `masters train` works in OUT.partial/ and renames it to OUT when done.


rule train:
    input:
        unpack(train_inputs),
    output:
        directory(out("students")),
    log:
        log_of("students"),
    benchmark:
        bench_of("students")
    conda:
        "../envs/masters.yaml"
    threads: RES["train"].threads
    resources:
        **RES["train"].resources,
    params:
        masters=MASTERS,
        # computed from the wildcards only, so Snakemake compares it between runs
        args=lambda w: specs.train_args(DESIGN, w.student, w.experiment, int(w.seed)),
    shell:
        "{params.masters} train --student {input.student} --questions {input.questions} {params.args}"
        " --threads {threads} --gpus {resources.job_gpus} --out {output} > {log} 2>&1"
