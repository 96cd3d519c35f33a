# The citable artifact (results/artifact/) and its reverse: rebuilding from a pinned one.
# Logic in workflow/kvreuse/artifact.py; README: "Citing and rebuilding from the artifact".


rule artifact:
    """Bundle raw records and metas, tables, figures and the write-up, with manifest.json."""
    localrule: True  # a tarball: on a cluster, made where snakemake runs
    input:
        raw=all_raw_inputs,
        tables=expand("results/tables/{t}.{ext}", t=TABLES, ext=["csv", "md", "tex"]),
        claims=[dag.CLAIMS_TABLE, dag.CLAIMS_TABLE.replace(".csv", ".md")],
        decision=[dag.DECISION_TABLE, dag.DECISION_TABLE.replace(".csv", ".md")],
        figures=expand("results/figures/{f}.{ext}", f=FIGURES, ext=["pdf", "png"]),
        paper=expand("paper/build/kvreuse.{ext}", ext=["md", "tex", "bib", "pdf"]),
        citation="CITATION.cff",
    output:
        tar=f"results/artifact/{ka.TAR_NAME}",
        sha256=f"results/artifact/{ka.TAR_NAME}.sha256",
        manifest=report(
            "results/artifact/manifest.json",
            caption="../report/artifact.rst",
            category="Artifact",
        ),
    params:
        citation=artifact_citation(),
        config=artifact_config(),
    log:
        "results/logs/artifact/artifact.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/artifact.py"


if PINNED:

    checkpoint artifact_unpack:
        """Check the pinned artifact's sha256, then each member against its manifest; unpack."""
        localrule: True  # on a cluster, where snakemake runs
        input:
            tar=pinned_artifact(),
        output:
            directory(PINNED_DIR),
        params:
            sha256=ARTIFACT["sha256"].lower(),
        log:
            f"{PINNED_DIR}.log",
        conda:
            "../../envs/analysis.yaml"
        script:
            "../scripts/artifact_unpack.py"
