import glob
import os

from kvreuse import artifact as ka
from kvreuse import config as kc
from kvreuse.provenance import config_hash


# schema and cross-key checks before any job: each problem named by its key, with what is allowed
kc.validate(config, workflow.source_path("../schemas/config.schema.yaml"))

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
FIGURE_TITLES = {
    "cold_warm": "Cold vs warm prefix (APC)",
    "restart": "Restart persistence",
    "prefix_sweep": "Prefix length",
    "multiturn": "Multi-turn chat",
    "baseline": "Baseline (no cache)",
    "serving": "Serving under load",
    "random_overhead": "Unique prompts (LMCache overhead)",
    "reload_vs_recompute": "Reload vs recompute after a restart",
}

# The citable artifact (workflow/rules/artifact.smk). With artifact.source set, the raw results
# come from that pinned artifact: its sha256 is checked here, before any job, and no run rule
# is made (RUN_PLATFORMS is empty), so the DAG needs neither a GPU nor vLLM.
ARTIFACT = {"doi": "", "source": "", "sha256": "", **config.get("artifact", {})}
ARTIFACTS_DIR = config["paths"].get("artifacts", "resources/artifacts")
PINNED = bool(ARTIFACT["source"])
if PINNED:
    ka.check_source(ARTIFACT["source"])
    if not ka.is_remote(ARTIFACT["source"]):
        ka.verify(ARTIFACT["source"], ARTIFACT["sha256"])
    PINNED_DIR = f"{ARTIFACTS_DIR}/{ARTIFACT['sha256'].lower()[:16]}"
    RUN_PLATFORMS = []


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


def pinned_targets(experiment):
    """Raw files of the pinned artifact, once it is verified and unpacked (a checkpoint)."""
    unpacked = checkpoints.artifact_unpack.get().output[0]
    return ka.raw_files(unpacked, experiment, REPORT_PLATFORMS)


def raw_inputs(experiment):
    def inputs(wildcards):
        if PINNED:
            files = pinned_targets(experiment)
        else:
            files = run_targets(experiment) + committed_targets(experiment)
        return files + [f[: -len(".jsonl")] + ".meta.json" for f in files]

    return inputs


def benchmark_files():
    """Snakemake benchmark: files of the runs measured here and of committed platforms."""
    if PINNED:
        return ka.benchmark_files(checkpoints.artifact_unpack.get().output[0], REPORT_PLATFORMS)
    files = [
        t.replace("results/raw/", "results/benchmarks/").replace(".jsonl", ".tsv")
        for e in EXPERIMENTS
        for t in run_targets(e)
    ]
    for p in REPORT_PLATFORMS:
        if p not in RUN_PLATFORMS:
            files += sorted(glob.glob(f"results/benchmarks/{p}/*/*.tsv"))
    return files


def all_raw_inputs(wildcards):
    """Every raw record and meta, and the runs' benchmark timings (the cost table's data)."""
    return sorted({f for e in EXPERIMENTS for f in raw_inputs(e)(wildcards)}) + benchmark_files()


def pinned_artifact():
    """The pinned artifact file: a local path, or a Zenodo record file through the storage plugin."""
    src = ARTIFACT["source"]
    return storage(src) if ka.is_remote(src) else src


def pinned_manifest(wildcards):
    if not PINNED:
        return []
    return [f"{checkpoints.artifact_unpack.get().output[0]}/{ka.MANIFEST}"]


def artifact_citation():
    """What the write-up and the manifest cite (the results digest is added by the scripts)."""
    return {
        "doi": ARTIFACT["doi"] or None,
        "source": ARTIFACT["source"] or None,
        "sha256": ARTIFACT["sha256"].lower() if PINNED else None,
    }


def artifact_config():
    """The study's configuration as this invocation used it (for the manifest and its hash)."""
    return {**ka.study_config(config), "run_platforms": RUN_PLATFORMS}


def figure_title(wildcards):
    return FIGURE_TITLES.get(wildcards.figure, wildcards.figure)


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
    )  # the artifact is built on request: `snakemake ... artifact` (README)


def model_spec(wildcards):
    return config["models"][wildcards.model]


def table_inputs(wildcards):
    if wildcards.table in ("runs", "cost"):
        return sorted({f for e in EXPERIMENTS for f in raw_inputs(e)(wildcards)})
    if wildcards.table == "fidelity":
        return raw_inputs("serving")(wildcards)
    return raw_inputs(DERIVED_TABLES.get(wildcards.table, wildcards.table))(wildcards)


def benchmark_inputs(wildcards):
    if wildcards.table != "cost":
        return []
    return benchmark_files()


def attempts_files():
    """results/raw/<platform>/attempts.yaml: runs tried elsewhere that left no raw file."""
    return sorted(glob.glob("results/raw/*/attempts.yaml"))
