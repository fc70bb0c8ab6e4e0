# Distillation and total reward of one stage group (METHOD.md §5): the stage's masked teacher
# vs pi_ref over the teacher's and the student's judged responses (or the dataset answers).


rule reward:
    input:
        responses=lambda w: reward_inputs(w)["responses"],
        teacher=lambda w: reward_inputs(w)["teacher_dir"],
        student=lambda w: reward_inputs(w)["student_dir"],
        questions=DESIGN.questions(),
    output:
        f"{RESULTS}/rewards/{{student}}/{{teacher}}/r{{ratio}}/{{data}}_s{{seed}}_{{part}}/{{reward}}.parquet",
    log:
        f"{RESULTS}/logs/reward/{{student}}_{{teacher}}_r{{ratio}}_{{data}}_s{{seed}}_{{part}}_{{reward}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reward/{{student}}_{{teacher}}_r{{ratio}}_{{data}}_s{{seed}}_{{part}}_{{reward}}.tsv"
    conda:
        "../envs/masters.yaml"
    threads: RES["reward"].threads
    resources:
        **RES["reward"].resources,
    params:
        settings=lambda w: (
            "--distill {distill} --reward {use} --alpha {alpha}".format(
                **reward_inputs(w)
            )
        ),
        sizes=f"--batch-size {REWARD['batch_size']} --chunk-size {REWARD['chunk_size']}",
    shell:
        "masters reward --responses {input.responses} --questions {input.questions}"
        " --teacher {input.teacher} --student {input.student} {params.settings} {params.sizes}"
        " --threads {threads} --gpus {resources.job_gpus} --out {output} > {log} 2>&1"
