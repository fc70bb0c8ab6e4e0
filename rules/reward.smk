# Distillation and total reward of one stage group (METHOD.md §5): the stage's masked teacher
# vs pi_ref over the teacher's and the student's judged responses (or the dataset answers).
# Every setting is a wildcard of the path (masters.paths), read here as it is.


rule reward:
    input:
        unpack(reward_inputs),
    output:
        out("rewards"),
    log:
        log_of("rewards"),
    benchmark:
        bench_of("rewards")
    conda:
        "../envs/masters.yaml"
    threads: RES["reward"].threads
    resources:
        **RES["reward"].resources,
    params:
        sizes=f"--batch-size {REWARD['batch_size']} --chunk-size {REWARD['chunk_size']}",
    shell:
        "masters reward --responses {input.responses} --questions {input.questions}"
        " --teacher {input.teacher} --student {input.student} --distill {wildcards.distill}"
        " --reward {wildcards.use} --alpha {wildcards.alpha} {params.sizes}"
        " --threads {threads} --gpus {resources.job_gpus} --out {output} > {log} 2>&1"
