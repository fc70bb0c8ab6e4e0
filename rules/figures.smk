# The paper's figures (PNG, PDF) from result files only: Fig. 2, Fig. F.4, Fig. 6 and the learning curves.

FIGURE_SPECS = {
    "fig2": specs.fig2_spec(DESIGN),
    "figF4": specs.figf4_spec(DESIGN),
    "curves": specs.curves_spec(DESIGN),
    "fig6": specs.fig6_spec(DESIGN),
}


rule fig2:
    input:
        specs.fig2_inputs(FIGURE_SPECS["fig2"]),
    output:
        png=report(f"{DESIGN.path('figure', figure='fig2')}.png", category="Figures"),
        pdf=f"{DESIGN.path('figure', figure='fig2')}.pdf",
    log:
        paths.log(RESULTS, "figure").format(figure="fig2"),
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        masters=MASTERS,
        spec=json.dumps(FIGURE_SPECS["fig2"]),
        stem=output_stem,
    shell:
        "{params.masters} figure fig2 --spec {params.spec:q} --out {params.stem} > {log} 2>&1"


rule figF4:
    input:
        specs.figf4_inputs(FIGURE_SPECS["figF4"]),
    output:
        png=report(f"{DESIGN.path('figure', figure='figF4')}.png", category="Figures"),
        pdf=f"{DESIGN.path('figure', figure='figF4')}.pdf",
        csv=f"{DESIGN.path('figure', figure='figF4')}.csv",
        md=f"{DESIGN.path('figure', figure='figF4')}.md",
    log:
        paths.log(RESULTS, "figure").format(figure="figF4"),
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        masters=MASTERS,
        spec=json.dumps(FIGURE_SPECS["figF4"]),
        stem=output_stem,
    shell:
        "{params.masters} figure figF4 --spec {params.spec:q} --out {params.stem} > {log} 2>&1"


rule curves:
    input:
        specs.curves_inputs(FIGURE_SPECS["curves"]),
    output:
        png=report(f"{DESIGN.path('figure', figure='curves')}.png", category="Figures"),
        pdf=f"{DESIGN.path('figure', figure='curves')}.pdf",
        csv=f"{DESIGN.path('figure', figure='curves')}.csv",
    log:
        paths.log(RESULTS, "figure").format(figure="curves"),
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        masters=MASTERS,
        spec=json.dumps(FIGURE_SPECS["curves"]),
        stem=output_stem,
    shell:
        "{params.masters} figure curves --spec {params.spec:q} --out {params.stem} > {log} 2>&1"


rule fig6:
    input:
        specs.fig6_inputs(FIGURE_SPECS["fig6"]),
    output:
        png=report(f"{DESIGN.path('figure', figure='fig6')}.png", category="Figures"),
        pdf=f"{DESIGN.path('figure', figure='fig6')}.pdf",
        csv=f"{DESIGN.path('figure', figure='fig6')}.csv",
    log:
        paths.log(RESULTS, "figure").format(figure="fig6"),
    localrule: True
    conda:
        "../envs/masters.yaml"
    params:
        masters=MASTERS,
        spec=json.dumps(FIGURE_SPECS["fig6"]),
        stem=output_stem,
    shell:
        "{params.masters} figure fig6 --spec {params.spec:q} --out {params.stem} > {log} 2>&1"
