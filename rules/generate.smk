# Training questions and pre-generated responses (METHOD.md §3): per (source, model, ratio,
# responses per question, seed, question part), shared by every experiment that reads them.


rule train_questions:
    input:
        DESIGN.question_files(),
    output:
        out("questions"),
    log:
        log_of("questions"),
    conda:
        "../envs/masters.yaml"
    threads: RES["default"].threads
    resources:
        **RES["default"].resources,
    params:
        masters=MASTERS,
        per_file=(
            f"--per-file {config['train_questions']['per_file']}"
            if config["train_questions"]["per_file"]
            else ""
        ),
        seed=config["seed"],
    shell:
        "{params.masters} questions --files {input} {params.per_file} --seed {params.seed}"
        " --out {output} > {log} 2>&1"


rule generate:
    input:
        model=generation_model,
        questions=out("questions"),
    output:
        out("responses"),
    log:
        log_of("responses"),
    benchmark:
        bench_of("responses")
    conda:
        env_of(GEN["backend"])
    threads: lambda w: RES[generate_family(w)].threads
    resources:
        **resources_by(generate_family),
    params:
        masters=MASTERS_GENERATE,
        shard=lambda w: "--shard {} --num-shards {}".format(*part_shard(w.part)),
        sampling=(
            f"--temperature {GEN['temperature']} --top-p {GEN['top_p']} --top-k {GEN['top_k']}"
            f" --repetition-penalty {GEN['repetition_penalty']} --max-new-tokens {GEN['max_new_tokens']}"
            f" --batch-size {GEN['batch_size']} --backend {GEN['backend']}"
            + (" --trust-remote-code" if GEN["trust_remote_code"] else "")
        ),
    shell:
        "{params.masters} generate --model {input.model} --label {wildcards.model} --questions {input.questions}"
        " --source {wildcards.source} --ratio {wildcards.ratio} --n {wildcards.n} --seed {wildcards.seed}"
        " {params.shard} {params.sampling} --threads {threads} --gpus {resources.job_gpus} --out {output} > {log} 2>&1"
