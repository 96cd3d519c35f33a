import logging
import sys

from kvreuse import artifact
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
try:
    m = artifact.unpack(snakemake.input.tar, snakemake.params.sha256, snakemake.output[0])  # noqa: F821
except artifact.ArtifactError as e:
    print(f"kvreuse: {e}", file=sys.__stderr__)  # on the console too, not only in the log
    raise
logging.info("unpacked %s (sha256 %s, bundled at commit %s) into %s", snakemake.input.tar,  # noqa: F821
             snakemake.params.sha256, m.get("git_commit"), snakemake.output[0])  # noqa: F821
