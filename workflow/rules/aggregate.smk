def table_inputs(wildcards):
    if wildcards.table in ("runs", "cost"):
        return sorted({f for e in EXPERIMENTS for f in raw_inputs(e)(wildcards)})
    if wildcards.table == "fidelity":
        return raw_inputs("serving")(wildcards)
    return raw_inputs(DERIVED_TABLES.get(wildcards.table, wildcards.table))(wildcards)


def benchmark_inputs(wildcards):
    if wildcards.table != "cost":
        return []
    return benchmark_files()


rule table:
    """Per-experiment table (and runs.csv, the provenance of every run) from the raw results."""
    localrule: True  # seconds of pandas: on a cluster, runs where snakemake runs
    input:
        raw=table_inputs,
        benchmarks=benchmark_inputs,
        cited="workflow/resources/cited.yaml",
    output:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
    params:
        max_error_fraction=config["max_error_fraction"],
        extra=table_params,
    wildcard_constraints:
        table="|".join(TABLES),
    log:
        "results/logs/tables/{table}.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/aggregate.py"
