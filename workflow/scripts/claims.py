import json
from pathlib import Path

import yaml

from kvreuse import claims
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
table = claims.build(yaml.safe_load(Path(inp.cited).read_text()), {Path(f).stem: f for f in inp.tables},
                     json.loads(Path(inp.llama_config).read_text()))
table.to_csv(out.csv, index=False)
Path(out.md).write_text(table.to_markdown(index=False) + "\n")
