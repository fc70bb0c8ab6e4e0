# Benchmark evaluation with lm-eval (greedy, chat template), one summary JSON per
# (run, benchmark) under {results}/eval/{run}/. A run is `models/<name>` (an untrained model)
# or `<student>/<experiment>/s<seed>/<final|stageK>` (a trained checkpoint).
#
# evaluation.per_benchmark_jobs: true  -> one job per (run, benchmark): changing one
#   benchmark's entry reruns only that benchmark's evaluations (paper scale: each is GPU-hours).
# false (the embedded default) -> one job per run scoring every benchmark: on CPU each job
#   spends ~8 s importing torch/transformers/lm-eval and <1 s per tiny benchmark.


if EVAL["per_benchmark_jobs"]:

    rule evaluate:
        input:
            model=eval_model,
            data=lambda w: (
                [benchmark_entries()[w.benchmark]["data"]]
                if "data" in benchmark_entries()[w.benchmark]
                else []
            ),
        output:
            f"{RESULTS}/eval/{{run}}/{{benchmark}}.json",
        log:
            f"{RESULTS}/logs/eval/{{run}}/{{benchmark}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/eval/{{run}}/{{benchmark}}.tsv"
        conda:
            "../envs/masters.yaml"
        threads: RES["evaluate"].threads
        resources:
            **RES["evaluate"].resources,
        params:
            checkpoint=run_checkpoint,
            label=lambda w: DESIGN.parse_run(w.run)["label"],
            benchmarks=lambda w: json.dumps([benchmark_entries()[w.benchmark]]),
            flags=evaluate_flags(),
            out_dir=lambda w, output: os.path.dirname(output[0]),
        shell:
            "masters evaluate --model {params.checkpoint} --label {params.label}"
            " --benchmarks '{params.benchmarks}' {params.flags} --threads {threads} --gpus {resources.job_gpus}"
            " --out-dir {params.out_dir} > {log} 2>&1"

else:

    rule evaluate:
        input:
            model=eval_model,
            data=benchmark_data(),
        output:
            [f"{RESULTS}/eval/{{run}}/{b}.json" for b in config["benchmarks"]],
            samples=f"{RESULTS}/eval/{{run}}/samples.jsonl",
        log:
            f"{RESULTS}/logs/eval/{{run}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/eval/{{run}}.tsv"
        conda:
            "../envs/masters.yaml"
        threads: RES["evaluate"].threads
        resources:
            **RES["evaluate"].resources,
        params:
            checkpoint=run_checkpoint,
            label=lambda w: DESIGN.parse_run(w.run)["label"],
            benchmarks=benchmarks_json(),
            flags=evaluate_flags(),
            out_dir=lambda w, output: os.path.dirname(output[0]),
        shell:
            "masters evaluate --model {params.checkpoint} --label {params.label}"
            " --benchmarks '{params.benchmarks}' {params.flags} --threads {threads} --gpus {resources.job_gpus}"
            " --samples {output.samples} --out-dir {params.out_dir} > {log} 2>&1"


rule world_accuracy_table:
    input:
        [
            f"{RESULTS}/eval/models/{m}/{b}.json"
            for m in model_sizes()
            for b in config["benchmarks"]
        ],
    output:
        f"{WORLD}/accuracy.csv",
        f"{WORLD}/accuracy.md",
        f"{WORLD}/accuracy.tex",
    log:
        f"{WORLD}/logs/accuracy_table.log",
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        stem=lambda w, output: os.path.splitext(output[0])[0],
    shell:
        "masters accuracy-table --results {input} --out {params.stem} > {log} 2>&1"
