# Offline stage-by-stage training of one (student, experiment, seed) (METHOD.md §6-§7).
# Resumable: `masters train` works in OUT.partial/ and renames it to OUT when done.


rule train:
    input:
        unpack(train_inputs),
    output:
        directory(f"{RESULTS}/students/{{student}}/{{experiment}}/s{{seed}}"),
    log:
        f"{RESULTS}/logs/train/{{student}}_{{experiment}}_s{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{student}}_{{experiment}}_s{{seed}}.tsv"
    conda:
        "../envs/masters.yaml"
    threads: RES["train"].threads
    resources:
        **RES["train"].resources,
    params:
        stages=lambda w, input: train_stage_args(w, input),
        schedule=train_schedule,
        settings=train_settings,
    shell:
        "masters train --student {input.student} --questions {input.questions} {params.stages}"
        " {params.settings} --threads {threads} --gpus {resources.job_gpus} --out {output} > {log} 2>&1"
