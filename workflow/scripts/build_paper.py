from pathlib import Path

from kvreuse.paper import build
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
inp = snakemake.input  # noqa: F821
tables = {Path(f).stem: Path(f) for f in inp.tables}
figures = {Path(f).stem: Path(f) for f in inp.figures}
build(Path(inp.template), tables, figures, Path(inp.cited), Path(inp.llama_config),
      Path(snakemake.output.md), Path(snakemake.output.pdf))  # noqa: F821
