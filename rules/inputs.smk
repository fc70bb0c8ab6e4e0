# Paper-scale inputs fetched once (masters/hub.py): a Hub model at a pinned revision, a
# training dataset (Hub or local parquet) in the question schema, and a benchmark's test data
# (a Hub dataset at a revision, as parquet that the evaluation reads offline). The token, if needed, comes
# from HF_TOKEN in the environment. Not used by the embedded default (its models are local).


rule snapshot:
    output:
        directory(out("hub_model")),
    log:
        log_of("hub_model"),
    conda:
        "../envs/masters.yaml"
    threads: RES["default"].threads
    resources:
        **RES["default"].resources,
    params:
        masters=MASTERS,
        args=lambda w: specs.snapshot_args(DESIGN, w.model),
    shell:
        "{params.masters} snapshot {params.args} --out {output} > {log} 2>&1"


rule dataset:
    output:
        out("dataset"),
    log:
        log_of("dataset"),
    conda:
        "../envs/masters.yaml"
    threads: RES["default"].threads
    resources:
        **RES["default"].resources,
    params:
        masters=MASTERS,
        spec=lambda w: json.dumps(DESIGN.dataset_source(w.dataset)),
    shell:
        "{params.masters} dataset --name {wildcards.dataset} --spec {params.spec:q}"
        " --out {output} > {log} 2>&1"


rule benchmark_data:
    output:
        directory(out("hub_benchmark")),
    log:
        log_of("hub_benchmark"),
    conda:
        "../envs/masters.yaml"
    threads: RES["default"].threads
    resources:
        **RES["default"].resources,
    params:
        masters=MASTERS,
        args=lambda w: specs.fetch_benchmark_args(DESIGN, w.benchmark),
    shell:
        "{params.masters} fetch-benchmark --name {wildcards.benchmark} {params.args} --out {output} > {log} 2>&1"
