import logging

from kvreuse import artifact, provenance
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
inp, out, params = snakemake.input, snakemake.output, snakemake.params  # noqa: F821
raw = list(inp.raw)
cite = artifact.citation(**params.citation, results_sha256=artifact.results_digest(raw))
digest = artifact.build(list(inp.tables) + list(inp.claims) + list(inp.decision) + list(inp.figures) + list(inp.paper), raw, params.config,
                        provenance.git_commit("."), cite, inp.citation, out.tar, out.sha256,
                        out.manifest)
logging.info("artifact %s: sha256 %s (results sha256 %s)", out.tar, digest, cite["results_sha256"])
