import json
from pathlib import Path

from kvreuse import dag
from kvreuse.aggregate import build, write
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
jsonl = [f for f in snakemake.input.raw if f.endswith(".jsonl")]  # noqa: F821
freshness = snakemake.params.freshness  # noqa: F821
# a pinned artifact: its runs answer the config it was bundled with (its manifest's)
if snakemake.input.manifest:  # noqa: F821
    manifest = json.loads(Path(snakemake.input.manifest[0]).read_text())  # noqa: F821
    freshness = dag.pinned_freshness(manifest, snakemake.wildcards.table)  # noqa: F821
table = build(snakemake.wildcards.table, jsonl, snakemake.params.max_error_fraction,  # noqa: F821
              benchmark_files=snakemake.input.benchmarks,  # noqa: F821
              convert_older=snakemake.params.convert_older,  # noqa: F821
              context_files=list(snakemake.input.context),  # noqa: F821
              **snakemake.params.extra, **freshness)  # noqa: F821
write(table, snakemake.output.csv, snakemake.output.md, snakemake.output.tex)  # noqa: F821
