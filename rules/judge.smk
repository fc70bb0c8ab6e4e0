# Accuracy reward r_acc of every response (METHOD.md §4): the rule judge, or an LLM judge
# (the student by default, App. F.7), keyed in the path so both can coexist.


rule judge:
    input:
        responses=out("responses"),
        questions=out("questions"),
        judge_model=lambda w: (
            [DESIGN.model_dir(w.judge[4:])] if w.judge.startswith("llm-") else []
        ),
    output:
        out("judged"),
    log:
        log_of("judged"),
    benchmark:
        bench_of("judged")
    conda:
        env_of(JUDGE["backend"])
    threads: lambda w: RES[judge_family(w)].threads
    resources:
        **resources_by(judge_family),
    params:
        masters=MASTERS_JUDGE,
        kind=lambda w, input: (
            f"--kind llm --judge-model {input.judge_model[0]} --backend {JUDGE['backend']}"
            f" --max-new-tokens {JUDGE['max_new_tokens']} --batch-size {JUDGE['batch_size']}"
            if w.judge.startswith("llm-")
            else "--kind rule"
        ),
    shell:
        "{params.masters} judge --responses {input.responses} --questions {input.questions} {params.kind}"
        " --threads {threads} --gpus {resources.job_gpus} --out {output} > {log} 2>&1"
