import json
from pathlib import Path

from kvreuse import artifact
from kvreuse.paper import build
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
inp, out = snakemake.input, snakemake.output  # noqa: F821
tables = {Path(f).stem: Path(f) for f in [*inp.tables, inp.claims, inp.decision]}
figures = {Path(f).stem: Path(f) for f in inp.figures}
cite = artifact.citation(**snakemake.params.citation,  # noqa: F821
                         results_sha256=artifact.results_digest(list(inp.raw)))
if inp.pinned_manifest:  # rebuilt from a pinned artifact: name the commit that bundled it
    cite["bundled_at"] = json.loads(Path(inp.pinned_manifest[0]).read_text()).get("git_commit")
build({"md": Path(inp.template), "tex": Path(inp.tex_template), "bib": Path(inp.bib_template)},
      tables, figures, Path(inp.cited), Path(inp.llama_config),
      {k: Path(out[k]) for k in ("md", "tex", "bib", "pdf")}, cite=cite, attempts=list(inp.attempts))
