# The paper's tables (csv, md, tex) from evaluation summaries only (METHOD.md §8).


rule table:
    input:
        lambda w: table_inputs(w.table),
    output:
        csv=report(
            f"{RESULTS}/tables/{{table}}.csv",
            category="Tables",
            labels={"table": "{table}", "format": "csv"},
        ),
        md=f"{RESULTS}/tables/{{table}}.md",
        tex=f"{RESULTS}/tables/{{table}}.tex",
    log:
        f"{RESULTS}/logs/tables/{{table}}.log",
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        spec=lambda w: json.dumps(table_spec(w.table)),
        stem=lambda w, output: os.path.splitext(output.csv)[0],
    shell:
        "masters table --spec '{params.spec}' --out {params.stem} > {log} 2>&1"
