def table_inputs(wildcards):
    if wildcards.table == "runs":
        return sorted({f for e in EXPERIMENTS for f in raw_inputs(e)(wildcards)})
    return raw_inputs(wildcards.table)(wildcards)


rule table:
    """Per-experiment table (and runs.csv, the provenance of every run) from the raw results."""
    input:
        raw=table_inputs,
    output:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    params:
        max_error_fraction=config["max_error_fraction"],
    wildcard_constraints:
        table="|".join(TABLES),
    log:
        "results/logs/tables/{table}.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/aggregate.py"
