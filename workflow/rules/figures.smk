rule figure:
    """One figure from its table and its own script (workflow/scripts/figures/<figure>.py):
    editing one plotting script reruns that figure (and the paper), nothing else."""
    localrule: True  # seconds of matplotlib: on a cluster, runs where snakemake runs
    input:
        table="results/tables/{figure}.csv",
        # every table the figure reads, its own first (kvreuse.dag.FIGURE_TABLES)
        tables=figure_tables,
        script="workflow/scripts/figures/{figure}.py",
        code=figure_code,  # the package modules the script imports
    output:
        pdf="results/figures/{figure}.pdf",
        png=report(
            "results/figures/{figure}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory=figure_title,
            labels={"figure": "{figure}", "script": "workflow/scripts/figures/{figure}.py"},
        ),
    wildcard_constraints:
        figure="|".join(FIGURES),
    log:
        "results/logs/figures/{figure}.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/figures/{wildcards.figure}.py"
