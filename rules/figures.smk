# The paper's figures (PNG, PDF) from result files only: Fig. 2 and Fig. F.4.


rule fig2:
    input:
        fig2_inputs(),
    output:
        png=report(f"{RESULTS}/figures/fig2.png", category="Figures"),
        pdf=f"{RESULTS}/figures/fig2.pdf",
    log:
        f"{RESULTS}/logs/figures/fig2.log",
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        spec=json.dumps(fig2_spec()),
        stem=lambda w, output: os.path.splitext(output.png)[0],
    shell:
        "masters figure fig2 --spec '{params.spec}' --out {params.stem} > {log} 2>&1"


rule figF4:
    input:
        figf4_inputs(),
    output:
        png=report(f"{RESULTS}/figures/figF4.png", category="Figures"),
        pdf=f"{RESULTS}/figures/figF4.pdf",
    log:
        f"{RESULTS}/logs/figures/figF4.log",
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        spec=json.dumps({"files": figf4_inputs()}),
        stem=lambda w, output: os.path.splitext(output.png)[0],
    shell:
        "masters figure figF4 --spec '{params.spec}' --out {params.stem} > {log} 2>&1"
