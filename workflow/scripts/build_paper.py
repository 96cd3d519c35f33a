import json
from pathlib import Path

from kvreuse import artifact
from kvreuse.paper import build
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
inp = snakemake.input  # noqa: F821
tables = {Path(f).stem: Path(f) for f in inp.tables}
figures = {Path(f).stem: Path(f) for f in inp.figures}
cite = artifact.citation(**snakemake.params.citation,  # noqa: F821
                         results_sha256=artifact.results_digest(list(inp.raw)))
if inp.pinned_manifest:  # rebuilt from a pinned artifact: name the commit that bundled it
    cite["bundled_at"] = json.loads(Path(inp.pinned_manifest[0]).read_text()).get("git_commit")
build(Path(inp.template), tables, figures, Path(inp.cited), Path(inp.llama_config),
      Path(snakemake.output.md), Path(snakemake.output.pdf), cite=cite,  # noqa: F821
      attempts=list(inp.attempts))
