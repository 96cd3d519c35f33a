from pathlib import Path

import yaml

from kvreuse import decision
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
table = decision.build({Path(f).stem: f for f in inp.tables}, yaml.safe_load(Path(inp.cited).read_text()),
                       yaml.safe_load(Path(inp.links).read_text()), snakemake.params.output_tokens,  # noqa: F821
                       snakemake.params.in_flight)  # noqa: F821
table.to_csv(out.csv, index=False)
Path(out.md).write_text(table.to_markdown(index=False) + "\n")
