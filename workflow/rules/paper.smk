rule notebook:
    """The analysis notebook (jupytext percent format), executed over the tables."""
    localrule: True  # on a cluster, runs where snakemake runs
    input:
        notebook="workflow/notebooks/analysis.py",
        tables=expand("results/tables/{t}.csv", t=TABLES),
        code=code("workflow/scripts/run_notebook.py") + code("workflow/notebooks/analysis.py"),
    output:
        "results/notebooks/analysis.ipynb",
    log:
        "results/logs/notebooks/analysis.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/run_notebook.py"


rule paper:
    """The write-up from the tables, figures and cited claims: Markdown (for the web) and LaTeX
    with its BibTeX, compiled to the PDF by latexmk (kvreuse/paper.py, kvreuse/latexmk.py)."""
    localrule: True  # on a cluster, runs where snakemake runs
    input:
        template="paper/kvreuse.md.j2",
        tex_template="paper/kvreuse.tex.j2",
        bib_template="paper/kvreuse.bib.j2",
        citation_cff="CITATION.cff",
        accounting_template="paper/accounting.md.j2",  # included by the templates
        accounting_tex_template="paper/accounting.tex.j2",
        reload_template="paper/reload.md.j2",  # included by the templates
        reload_tex_template="paper/reload.tex.j2",
        decision_template="paper/decision.md.j2",  # included by the templates
        decision_tex_template="paper/decision.tex.j2",
        conversations_template="paper/conversations.md.j2",  # multiturn_long, chunk_sweep
        conversations_tex_template="paper/conversations.tex.j2",
        pressure_template="paper/pressure.md.j2",  # included by the templates
        pressure_tex_template="paper/pressure.tex.j2",
        tables=expand("results/tables/{t}.csv", t=TABLES),
        tables_md=expand("results/tables/{t}.md", t=TABLES),
        figures=expand("results/figures/{f}.png", f=FIGURES),
        figures_pdf=expand("results/figures/{f}.pdf", f=FIGURES),
        cited=dag.CITED,
        claims=dag.CLAIMS_TABLE,
        decision=dag.DECISION_TABLE,
        attempts=attempts_files(),
        llama_config="workflow/resources/llama-3.1-8b/config.json",
        raw=all_raw_inputs,
        pinned_manifest=pinned_manifest,
        code=code("workflow/scripts/build_paper.py"),
    output:
        md="paper/build/kvreuse.md",
        tex="paper/build/kvreuse.tex",
        bib="paper/build/kvreuse.bib",
        pdf=report(
            "paper/build/kvreuse.pdf", caption="../report/paper.rst", category="Write-up"
        ),
    params:
        citation=artifact_citation(),
    log:
        "results/logs/paper/paper.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/build_paper.py"
