# Benchmark evaluation with lm-eval (greedy, chat template), one summary JSON per
# (run, benchmark) under {results}/eval/{run}/. A run is `models/<name>` (an untrained model)
# or `<student>/<experiment>/s<seed>/<final|stageK>` (a trained checkpoint).
#
# evaluation.per_benchmark_jobs: true  -> one job per (run, benchmark): changing one
#   benchmark's entry reruns only that benchmark's evaluations (paper scale: each is GPU-hours).
# false (the embedded default) -> one job per run scoring every benchmark: on CPU each job
#   spends ~8 s importing torch/transformers/lm-eval and <1 s per tiny benchmark.


rule evaluate:
    input:
        model=lambda w: specs.eval_input(DESIGN, w.run),
        data=eval_data,
    output:
        eval_outputs(),
        samples=eval_samples(),
    log:
        eval_log(),
    benchmark:
        eval_bench()
    conda:
        "../envs/masters.yaml"
    threads: lambda w: RES[eval_family(w)].threads
    resources:
        **resources_by(eval_family),
    params:
        masters=MASTERS,
        checkpoint=lambda w: specs.eval_checkpoint(DESIGN, w.run),
        label=lambda w: DESIGN.parse_run(w.run)["label"],
        benchmarks=lambda w: json.dumps([BENCHMARKS[b] for b in eval_benchmarks(w)]),
        flags=(
            f"--batch-size {EVAL['batch_size']}"
            + (f" --limit {EVAL['limit']}" if EVAL["limit"] else "")
            + (" --trust-remote-code" if EVAL["trust_remote_code"] else "")
        ),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    shell:
        "{params.masters} evaluate --model {params.checkpoint} --label {params.label:q}"
        " --benchmarks {params.benchmarks:q} {params.flags} --threads {threads} --gpus {resources.job_gpus}"
        " --samples {output.samples} --out-dir {params.out_dir} > {log} 2>&1"


# A judged benchmark (`judge:` in its entry: MM-Vet, MathVista's / MMBench's LLM step): the
# `benchmark_judge` LLM reads the evaluation's responses; the tables read {benchmark}.judged.json.
rule judge_benchmark:
    input:
        evaluation=out("evaluation"),
        samples=judged_samples,
        judge_model=lambda w: benchmark_judge_model(),
    output:
        summary=out("judged_evaluation"),
        replies=out("judged_items"),
    log:
        log_of("judged_evaluation"),
    benchmark:
        bench_of("judged_evaluation")
    conda:
        env_of(config["benchmark_judge"]["backend"])
    threads: RES["benchmark_judge"].threads
    resources:
        **RES["benchmark_judge"].resources,
    params:
        masters=MASTERS_BENCHMARK_JUDGE,
        benchmark=lambda w: json.dumps(BENCHMARKS[w.benchmark]),
        judge=lambda w: benchmark_judge_flags(),
    shell:
        "{params.masters} judge-benchmark --benchmark {params.benchmark:q} --evaluation {input.evaluation}"
        " --samples {input.samples} {params.judge} --threads {threads} --gpus {resources.job_gpus}"
        " --items {output.replies} --out {output.summary} > {log} 2>&1"


rule curve:
    input:
        run=lambda w: DESIGN.train_dir(w.student, w.experiment, int(w.seed)),
        data=lambda w: [b["data"] for b in BENCHMARKS.values() if "data" in b],
    output:
        out("curve") + ".csv",
    log:
        log_of("curve"),
    benchmark:
        bench_of("curve")
    conda:
        "../envs/masters.yaml"
    threads: RES["evaluate"].threads
    resources:
        **RES["evaluate"].resources,
    params:
        masters=MASTERS,
        benchmarks=json.dumps(list(BENCHMARKS.values())),
        flags=(
            f"--batch-size {EVAL['batch_size']}"
            + (f" --limit {CURVES['limit']}" if CURVES.get("limit") else "")
            + (" --trust-remote-code" if EVAL["trust_remote_code"] else "")
        ),
    shell:
        "{params.masters} curve --train-dir {input.run} --benchmarks {params.benchmarks:q} {params.flags}"
        " --threads {threads} --gpus {resources.job_gpus} --out {output} > {log} 2>&1"


rule world_accuracy_table:
    input:
        [
            DESIGN.evaluation(paths.run("model", model=m), b)
            for m in VQA_MODELS
            for b in BENCHMARKS
        ],
    output:
        multiext(out("world_accuracy"), ".csv", ".md", ".tex"),
    log:
        log_of("world_accuracy"),
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        masters=MASTERS,
        stem=output_stem,
    shell:
        "{params.masters} accuracy-table --results {input} --out {params.stem} > {log} 2>&1"
