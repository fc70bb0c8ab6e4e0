# The paper's tables (csv, md, tex) from evaluation summaries only (METHOD.md §8).
# `masters trace TABLE ROW` prints the files behind a row.


rule table:
    input:
        lambda w: specs.table_inputs(specs.table_spec(DESIGN, w.table, REPO)),
    output:
        csv=report(
            paths.pattern(RESULTS, "table") + ".csv",
            category="Tables",
            labels={"table": "{table}", "format": "csv"},
        ),
        md=paths.pattern(RESULTS, "table") + ".md",
        tex=paths.pattern(RESULTS, "table") + ".tex",
        categories=paths.pattern(RESULTS, "table") + ".categories.csv",
    log:
        log_of("table"),
    wildcard_constraints:
        table="|".join(re.escape(t) for t in DESIGN.tables),  # tables/fidelity.* is the report
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        masters=MASTERS,
        spec=lambda w: json.dumps(specs.table_spec(DESIGN, w.table, REPO)),
        stem=output_stem,
    shell:
        "{params.masters} table --spec {params.spec:q} --out {params.stem} > {log} 2>&1"


FIDELITY_SPEC = specs.fidelity_spec(DESIGN, REPO)


rule fidelity:
    input:
        specs.fidelity_inputs(FIDELITY_SPEC),
    output:
        csv=report(f"{DESIGN.path('table', table='fidelity')}.csv", category="Tables"),
        md=f"{DESIGN.path('table', table='fidelity')}.md",
    log:
        paths.log(RESULTS, "table").format(table="fidelity"),
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        masters=MASTERS,
        spec=json.dumps(FIDELITY_SPEC),
        stem=output_stem,
    shell:
        "{params.masters} fidelity --spec {params.spec:q} --out {params.stem} > {log} 2>&1"


JUDGES_SPEC = specs.judges_spec(DESIGN)


rule judges:
    input:
        specs.judges_inputs(JUDGES_SPEC),
    output:
        csv=report(f"{DESIGN.path('table', table='judges')}.csv", category="Tables"),
        md=f"{DESIGN.path('table', table='judges')}.md",
    log:
        paths.log(RESULTS, "table").format(table="judges"),
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        masters=MASTERS,
        spec=json.dumps(JUDGES_SPEC),
        stem=output_stem,
    shell:
        "{params.masters} judges --spec {params.spec:q} --out {params.stem} > {log} 2>&1"
