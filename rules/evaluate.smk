# Benchmark evaluation with lm-eval, and the small accuracy table of the world's models.


rule evaluate_world_model:
    input:
        model=f"{WORLD}/models/{{model}}",
        data=benchmark_data(),
    output:
        summary=f"{RESULTS}/eval/world_{{model}}.json",
        samples=f"{RESULTS}/eval/world_{{model}}_samples.jsonl",
    log:
        f"{RESULTS}/logs/evaluate_world_{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_world_{{model}}.tsv"
    conda:
        "../envs/masters.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        benchmarks=benchmarks_json(),
        batch=config["evaluation"]["batch_size"],
        limit=lambda w: (
            f"--limit {config['evaluation']['limit']}"
            if config["evaluation"]["limit"]
            else ""
        ),
        remote=(
            "--trust-remote-code" if config["evaluation"]["trust_remote_code"] else ""
        ),
    shell:
        "masters evaluate --model {input.model} --label {wildcards.model} --benchmarks '{params.benchmarks}'"
        " --batch-size {params.batch} {params.limit} {params.remote} --threads {threads}"
        " --samples {output.samples} --out {output.summary} > {log} 2>&1"


rule world_accuracy_table:
    input:
        expand(f"{RESULTS}/eval/world_{{model}}.json", model=model_sizes()),
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
