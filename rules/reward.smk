# The reward of one stage group (METHOD.md §5), in two steps:
# - score: the stage's masked teacher vs pi_ref over the group's responses (the teacher's and
#   the student's, or the dataset answers): D per response and pi_ref's token log-probs. The
#   model work, done once per group whatever the reward settings;
# - reward: R_acc from the judged responses, R_distill from the scores, R (no model, seconds).
# Every setting is a wildcard of the path (masters.paths), read here as it is.


rule score:
    input:
        unpack(score_inputs),
    output:
        out("scores"),
    log:
        log_of("scores"),
    benchmark:
        bench_of("scores")
    conda:
        "../envs/masters.yaml"
    threads: RES["score"].threads
    resources:
        **RES["score"].resources,
    params:
        masters=MASTERS,
        sizes=f"--batch-size {REWARD['batch_size']} --chunk-size {REWARD['chunk_size']}",
    shell:
        "{params.masters} score --responses {input.responses} --questions {input.questions}"
        " --teacher {input.teacher} --student {input.student} {params.sizes}"
        " --threads {threads} --gpus {resources.job_gpus} --out {output} > {log} 2>&1"


rule reward:
    input:
        unpack(reward_inputs),
    output:
        out("rewards"),
    log:
        log_of("rewards"),
    conda:
        "../envs/masters.yaml"
    threads: RES["default"].threads
    resources:
        **RES["default"].resources,
    params:
        masters=MASTERS,
    shell:
        "{params.masters} reward --responses {input.responses} --scores {input.scores}"
        " --distill {wildcards.distill} --reward {wildcards.use} --alpha {wildcards.alpha}"
        " --out {output} > {log} 2>&1"
