# Paper-scale inputs fetched once (masters/hub.py): a Hub model at a pinned revision, and a
# training dataset (Hub or local parquet) in the question schema. The token, if needed, comes
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
        repo=lambda w: DESIGN.hub_models()[w.model]["hub"],
        revision=lambda w: DESIGN.hub_models()[w.model]["revision"],
        allow=lambda w: (
            "--allow "
            + " ".join(
                map(shlex.quote, DESIGN.hub_models()[w.model]["allow_patterns"])
            )
            if "allow_patterns" in DESIGN.hub_models()[w.model]
            else ""
        ),
    shell:
        "masters snapshot --repo {params.repo} --revision {params.revision} {params.allow}"
        " --out {output} > {log} 2>&1"


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
        spec=lambda w: json.dumps(DESIGN.dataset_source(w.dataset)),
    shell:
        "masters dataset --name {wildcards.dataset} --spec {params.spec:q}"
        " --out {output} > {log} 2>&1"
