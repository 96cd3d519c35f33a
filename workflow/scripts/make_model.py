from pathlib import Path

from kvreuse.models import make_model
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
make_model(snakemake.wildcards.model, snakemake.params.spec, Path(snakemake.output[0]))  # noqa: F821
