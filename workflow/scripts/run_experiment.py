import logging
import os
from pathlib import Path

from kvreuse import provenance, schema
from kvreuse.config import instance_devices
from kvreuse.experiments import RunSpec, run, run_alternating
from kvreuse.plan import cuda_available
from kvreuse.platforms import gpu_count_problem, needs_gpu, visible_gpus
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
spec = snakemake.params.run  # noqa: F821
# A GPU platform measured without a GPU would be the CPU under a GPU's name: a job sent to
# the wrong partition, without its GPU request, or in a CPU-only vLLM environment stops here.
platform = spec["platform"]
if needs_gpu(platform) and not cuda_available():
    raise SystemExit(f"platform {platform} needs a GPU, but this job sees none "
                     f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
                     f"SLURM partition {os.environ.get('SLURM_JOB_PARTITION')!r})")
# A server with tensor_parallel N needs N GPUs in this job, and instances pinned to the job's
# GPUs (cross_instance's instance_devices) the GPUs they name (a job given fewer would fail in
# vLLM's start, minutes later and less clearly): as a job without its GPU, it stops here.
if needs_gpu(platform):
    one = spec if "server" in spec else spec["arms"][0]
    problem = gpu_count_problem(platform, schema.get(one["server"], "server", "tensor_parallel"), *visible_gpus(),
                                instance_devices=instance_devices(one["params"], one["experiment"]))
    if problem:
        raise SystemExit(problem)
# The meta records the commit (kvreuse.provenance.git_commit: git, or $KVREUSE_GIT_COMMIT on a
# host without .git); a GPU run without one stops here, a CPU run records null.
commit = provenance.git_commit(".")
problem = provenance.commit_problem(platform, commit)
if problem:
    raise SystemExit(problem)
if commit is None:
    logging.getLogger("kvreuse").warning(
        "no commit known (no .git here and $%s unset): the meta records git_commit null",
        provenance.COMMIT_ENV)
model_dir, server_logs = Path(snakemake.input.model), Path(snakemake.params.server_logs)  # noqa: F821
if "arms" in spec:  # an alternating experiment: every arm of the platform in this one job
    outputs = {Path(o).name.removesuffix(".jsonl"): Path(o) for o in snakemake.output.jsonl}  # noqa: F821
    run_alternating([RunSpec(**arm, model_dir=model_dir, out_jsonl=outputs[arm["arm_name"]],
                             log_dir=server_logs / arm["arm_name"]) for arm in spec["arms"]],
                    spec["server_runs"])
else:
    run(RunSpec(**spec, model_dir=model_dir, out_jsonl=Path(snakemake.output.jsonl),  # noqa: F821
                log_dir=server_logs))
