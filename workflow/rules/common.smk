import glob
import os

from snakemake.utils import validate

from kvreuse import config as kc
from kvreuse.provenance import config_hash


validate(config, "../schemas/config.schema.yaml")
kc.check(config)

RUN_PLATFORMS = list(config["run_platforms"])
REPORT_PLATFORMS = list(config["report_platforms"])
EXPERIMENTS = [e for e in kc.EXPERIMENTS if e in config["experiments"]]
MODELS_DIR = config["paths"]["models"]
LMCACHE_DIR = config["paths"]["lmcache"]
FIGURES = ["cold_warm", "restart", "prefix_sweep", "multiturn", "baseline", "serving", "random_overhead",
           "reload_vs_recompute"]
#: tables built from another experiment's raw files (besides runs, cost and fidelity)
DERIVED_TABLES = {"reload_vs_recompute": "prefix_sweep"}
TABLES = EXPERIMENTS + ["runs", "cost", "fidelity"] + list(DERIVED_TABLES)


wildcard_constraints:
    platform="|".join(["cpu", "h100", "h200", "a100", "l40s"]),
    arm="[A-Za-z0-9_]+",
    model="[A-Za-z0-9_.-]+",


def model_dir(platform):
    return f"{MODELS_DIR}/{kc.model_name(config, platform)}"


def models_used():
    return sorted({kc.model_name(config, p) for p in RUN_PLATFORMS})


def run_targets(experiment):
    """Raw files that this invocation measures."""
    return [
        f"results/raw/{p}/{experiment}/{arm}.jsonl"
        for p in RUN_PLATFORMS
        for arm in kc.arms_for(config, experiment, p)
    ]


def committed_targets(experiment):
    """Raw files of other platforms, committed to the repository (e.g. the GPU host's runs)."""
    found = []
    for p in REPORT_PLATFORMS:
        if p not in RUN_PLATFORMS:
            found += sorted(glob.glob(f"results/raw/{p}/{experiment}/*.jsonl"))
    return found


def raw_inputs(experiment):
    def inputs(wildcards):
        files = run_targets(experiment) + committed_targets(experiment)
        return files + [f[: -len(".jsonl")] + ".meta.json" for f in files]

    return inputs


def benchmark_files():
    """Snakemake benchmark: files of the runs measured here and of committed platforms."""
    files = [
        t.replace("results/raw/", "results/benchmarks/").replace(".jsonl", ".tsv")
        for e in EXPERIMENTS
        for t in run_targets(e)
    ]
    for p in REPORT_PLATFORMS:
        if p not in RUN_PLATFORMS:
            files += sorted(glob.glob(f"results/benchmarks/{p}/*/*.tsv"))
    return files


def run_params(experiment, platform):
    """What one run rule needs from config; a change here reruns only the runs it touches."""

    def params(wildcards):
        name = kc.model_name(config, platform)
        spec = {
            "platform": platform,
            "experiment": experiment,
            "arm_name": wildcards.arm,
            "arm": config["arms"][wildcards.arm],
            "params": kc.experiment_params(config, platform, experiment),
            "model_name": name,
            "model": config["models"][name],
            "server": kc.server_config(config, platform),
            "client": config["client"],
            "seed": config["seed"],
            "lmcache_dir": f"{LMCACHE_DIR}/{platform}",
        }
        spec["config_hash"] = config_hash(spec)
        return spec

    return params


def lmcache_inputs(platform):
    # ancient: a regenerated preflight (e.g. another arm's config changed) reruns no measurement
    def inputs(wildcards):
        if config["arms"][wildcards.arm].get("lmcache") is None:
            return []
        return [ancient(f"{LMCACHE_DIR}/{platform}/preflight.json")]

    return inputs


def lmcache_runs(platform):
    """[experiment, arm] pairs with an LMCache arm that this platform measures."""
    return [
        [e, arm]
        for e in EXPERIMENTS
        for arm in kc.arms_for(config, e, platform)
        if config["arms"][arm].get("lmcache") is not None
    ]


def lmcache_preflight_params(wildcards):
    runs = lmcache_runs(wildcards.platform)
    return {
        "store_root": f"{LMCACHE_DIR}/{wildcards.platform}",
        "runs": runs,
        "arms": {arm: config["arms"][arm] for _, arm in runs},
    }


def table_params(wildcards):
    """Extra inputs of a derived table (reload_vs_recompute: the platforms' link bandwidths)."""
    if wildcards.table == "reload_vs_recompute":
        return {"links_gb_s": {p: pc.get("links_gb_s", {}) for p, pc in config["platforms"].items()}}
    return {}


def all_targets():
    return (
        [f"results/tables/{t}.csv" for t in TABLES]
        + [f"results/figures/{f}.pdf" for f in FIGURES]
        + ["results/notebooks/analysis.ipynb", "paper/build/kvreuse.pdf", "paper/build/kvreuse.md"]
    )
