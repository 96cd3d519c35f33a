rule table:
    """Per-experiment table (and runs.csv, the provenance of every run) from the raw results."""
    localrule: True  # seconds of pandas: on a cluster, runs where snakemake runs
    input:
        raw=table_inputs,
        benchmarks=benchmark_inputs,
        # accounting.csv: attempts.yaml files and committed job-log archives (results/gpu-logs/);
        # the job logs under results/logs/ are read where they are, not as inputs
        context=context_inputs,
        # a pinned artifact's manifest: its config says which runs are current
        manifest=pinned_manifest,
        # the package modules its script imports: a changed table module remakes the table
        code=code("workflow/scripts/aggregate.py"),
    output:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    params:
        max_error_fraction=config["max_error_fraction"],
        extra=table_params,
        # the current config's hash of every configured run and the `archived` section: a
        # committed run made with another config is stale (kept out of the comparison tables)
        freshness=table_freshness,
        # a pinned artifact's runs cannot be rewritten: older schema versions are converted
        # on read (logged); results/raw/ must be at the current version
        convert_older=PINNED,
    wildcard_constraints:
        table="|".join(TABLES),
    log:
        "results/logs/tables/{table}.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/aggregate.py"


rule claims:
    """The source studies' numeric claims (workflow/resources/cited.yaml) beside our
    measurement of each, with a verdict (kvreuse/claims.py): the reproduce-or-refute table."""
    localrule: True  # seconds of pandas: on a cluster, runs where snakemake runs
    input:
        cited=dag.CITED,
        # only the tables that cited.yaml's rules read
        tables=expand("results/tables/{t}.csv", t=dag.claims_tables(config)),
        llama_config="workflow/resources/llama-3.1-8b/config.json",
        code=code("workflow/scripts/claims.py"),
    output:
        csv=dag.CLAIMS_TABLE,
        md=dag.CLAIMS_TABLE.replace(".csv", ".md"),
    log:
        "results/logs/tables/claims.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/claims.py"


rule decision:
    """When does reuse help: per workload, store, platform and metric, the difference that reuse
    makes with its CI (from the source tables' own CIs) and a verdict, with the source studies'
    numbers beside ours where the setups compare (kvreuse/decision.py)."""
    localrule: True  # seconds of pandas: on a cluster, runs where snakemake runs
    input:
        links=dag.DECISION_LINKS,
        cited=dag.CITED,
        tables=expand("results/tables/{t}.csv", t=dag.decision_tables(config)),
        code=code("workflow/scripts/decision.py"),
    output:
        csv=dag.DECISION_TABLE,
        md=dag.DECISION_TABLE.replace(".csv", ".md"),
    params:
        output_tokens=dag.decision_output_tokens(config),
        in_flight=dag.decision_in_flight(config),
    log:
        "results/logs/tables/decision.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/decision.py"
