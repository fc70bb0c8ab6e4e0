# Magnitude-masked teachers (METHOD.md §1): one job per (teacher, ratio > 0); ratio 0 is the
# teacher's own checkpoint, never copied.


rule mask:
    input:
        lambda w: DESIGN.model_dir(w.model),
    output:
        directory(f"{RESULTS}/masked/{{model}}/masked_r{{ratio}}"),
    log:
        f"{RESULTS}/logs/mask/{{model}}_r{{ratio}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/mask/{{model}}_r{{ratio}}.tsv"
    conda:
        "../envs/masters.yaml"
    threads: RES["mask"].threads
    resources:
        **RES["mask"].resources,
    params:
        root=lambda w, output: os.path.dirname(output[0]),
        include=lambda w: (
            "--include " + " ".join(f"'{x}'" for x in config["masking"]["include"])
            if config["masking"]["include"]
            else ""
        ),
        exclude=lambda w: (
            "--exclude " + " ".join(f"'{x}'" for x in config["masking"]["exclude"])
            if config["masking"]["exclude"]
            else ""
        ),
    shell:
        "masters mask --teacher {input} --ratios {wildcards.ratio} --out {params.root}"
        " {params.include} {params.exclude} --threads {threads} --quiet > {log} 2>&1"
