# Glue between the rules and kvreuse.dag, where the targets and input functions are (plain
# functions of config, tested in tests/test_dag_targets.py). Here: the checks before any job,
# and what needs Snakemake itself (checkpoints, storage(), ancient()).
from snakemake.exceptions import WorkflowError

from kvreuse import alternating
from kvreuse import artifact as ka
from kvreuse import code_deps
from kvreuse import config as kc
from kvreuse import dag
from kvreuse import platforms


# schema and cross-key checks before any job: each problem named by its key, with what is allowed
kc.validate(config, workflow.source_path("../schemas/config.schema.yaml"))

RUN_PLATFORMS = dag.run_platforms(config)
EXPERIMENTS = dag.experiments(config)
MODELS_DIR = config["paths"]["models"]
LMCACHE_DIR = config["paths"]["lmcache"]
FIGURES = dag.figures(config)
TABLES = dag.tables(config)

# The citable artifact (workflow/rules/artifact.smk). With artifact.source set, the raw results
# come from that pinned artifact: its sha256 is checked here, before any job, and no run rule
# is made (RUN_PLATFORMS is empty), so the DAG needs neither a GPU nor vLLM.
ARTIFACT = dag.artifact(config)
PINNED = dag.pinned(config)
if PINNED:
    dag.check_pinned(config)
    PINNED_DIR = dag.pinned_dir(config)


wildcard_constraints:
    platform="|".join(platforms.NAMES),
    arm="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_.-]+",


# A GPU platform measured on this machine needs its GPU here. Checked once the DAG is built and
# before any job starts (a Snakefile is parsed before Snakemake knows its executor, and onstart
# is the first point that does): not in a dry run (-n runs no onstart), nor when jobs are
# submitted elsewhere (--profile profiles/pace: non-local executor), nor for --touch, nor in a
# job's own snakemake on a cluster node (not the main process).
onstart:
    if workflow.is_main_process and workflow.local_exec and not workflow.touch:
        problem = dag.gpu_problem(config, *platforms.visible_gpus())
        if problem:
            raise WorkflowError(problem)


def model_dir(platform, experiment=None):
    return dag.model_dir(config, platform, experiment)


def run_targets(experiment):
    return dag.run_targets(config, experiment)


def unpacked_artifact():
    """The pinned artifact's folder, once it is verified and unpacked (a checkpoint)."""
    return checkpoints.artifact_unpack.get().output[0]


def all_raw_inputs(wildcards):
    return dag.all_raw_inputs(config, unpacked_artifact)


def table_inputs(wildcards):
    return dag.table_inputs(config, wildcards.table, unpacked_artifact)


def benchmark_inputs(wildcards):
    return dag.benchmark_inputs(config, wildcards.table, unpacked_artifact)


def pinned_artifact():
    """The pinned artifact file: a local path, or a Zenodo record file through the storage plugin."""
    src = ARTIFACT["source"]
    return storage(src) if ka.is_remote(src) else src


def pinned_manifest(wildcards):
    if not PINNED:
        return []
    return [f"{unpacked_artifact()}/{ka.MANIFEST}"]


def artifact_citation():
    return dag.artifact_citation(config)


def artifact_config():
    return dag.artifact_config(config)


def figure_title(wildcards):
    return dag.figure_title(wildcards.figure)


def figure_tables(wildcards):
    return dag.figure_tables(wildcards.figure)


def run_params(experiment, platform):
    return lambda wildcards: dag.run_params(config, experiment, platform, wildcards.arm)


def job_resource(experiment, platform, key):
    """A run job's share of its node (kvreuse.dag.job_resources): of its arm, or of every arm
    of an alternating job."""
    if ALTERNATING(experiment):
        arms = dag.kc.arms_for(config, experiment, platform)
        return dag.job_resources(config, experiment, platform, arms)[key]
    return lambda wildcards: dag.job_resources(config, experiment, platform, [wildcards.arm])[key]


def lmcache_inputs(platform):
    # ancient: a regenerated preflight (e.g. another arm's config changed) reruns no measurement
    def inputs(wildcards):
        if not dag.uses_lmcache(config, wildcards.arm):
            return []
        return [ancient(dag.preflight_file(config, platform))]

    return inputs


ALTERNATING = alternating.alternates
ALTERNATING_JOB = alternating.JOB


def alternating_outputs(experiment, platform, ext):
    return dag.alternating_outputs(config, experiment, platform, ext)


def alternating_lmcache_inputs(experiment, platform):
    # ancient, as for a job per arm: the preflight, if any arm of the job uses LMCache
    if not dag.alternating_uses_lmcache(config, experiment, platform):
        return []
    return [ancient(dag.preflight_file(config, platform))]


def lmcache_preflight_params(wildcards):
    return dag.lmcache_preflight_params(config, wildcards.platform)


def table_params(wildcards):
    return dag.table_params(config, wildcards.table)


def table_freshness(wildcards):
    return dag.table_freshness(config, wildcards.table)


def context_inputs(wildcards):
    return dag.context_inputs(wildcards.table)


def all_targets():
    return dag.all_targets(config)  # the artifact is built on request: `snakemake ... artifact` (README)


def model_spec(wildcards):
    return config["models"][wildcards.model]


def attempts_files():
    return dag.attempts_files()


def code(script):
    """The package files a rule's script imports (kvreuse.code_deps): inputs of the rules that
    build tables, figures and the write-up, so that a changed module makes them stale; never
    of a run rule (a code change reruns no measurement)."""
    return list(code_deps.imported_files(script))


def figure_code(wildcards):
    return code(f"workflow/scripts/figures/{wildcards.figure}.py")
