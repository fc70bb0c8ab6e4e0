# Magnitude-masked teachers (METHOD.md §1): one job per (teacher, ratio > 0); ratio 0 is the
# teacher's own checkpoint, never copied. One ratio per job, not all of a teacher's in one pass
# (figures and reasons: masters/masked_teacher.py).


rule mask:
    input:
        lambda w: DESIGN.model_dir(w.model),
    output:
        directory(out("masked")),
    log:
        log_of("masked"),
    benchmark:
        bench_of("masked")
    conda:
        "../envs/masters.yaml"
    threads: RES["mask"].threads
    resources:
        **RES["mask"].resources,
    params:
        masters=MASTERS,
        root=lambda w, output: os.path.dirname(output[0]),
        patterns=" ".join(
            f"--{key} {' '.join(map(shlex.quote, config['masking'][key]))}"
            for key in ("include", "exclude")
            if config["masking"][key]
        ),
    shell:
        "{params.masters} mask --teacher {input} --ratios {wildcards.ratio} --out {params.root}"
        " {params.patterns} --threads {threads} --quiet > {log} 2>&1"
