# kvreuse: KV-cache reuse in LLM serving (vLLM APC, LMCache), measured with counters.
# setup -> run (per platform, experiment, arm) -> aggregate -> figures -> paper -> artifact
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/setup.smk"
include: "workflow/rules/experiments.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/artifact.smk"


rule all:
    default_target: True
    input:
        all_targets(),
