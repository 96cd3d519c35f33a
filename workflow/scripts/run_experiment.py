from pathlib import Path

from kvreuse.experiments import RunSpec, run
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
run(RunSpec(**snakemake.params.run,  # noqa: F821
            model_dir=Path(snakemake.input.model),  # noqa: F821
            out_jsonl=Path(snakemake.output.jsonl),  # noqa: F821
            log_dir=Path(snakemake.params.server_logs)))  # noqa: F821
