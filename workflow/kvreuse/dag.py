"""The workflow's targets and input functions as plain functions of ``config`` (workflow/rules/
common.smk wraps them for Snakemake): which raw files are measured here and which are
committed, what each rule reads, the parameters of a run (and its config hash), the tables and
figures, and whether the results come from a pinned artifact.

Paths are relative to the working directory; the functions that look for committed files take
``root``, the directory to look in (the working directory when None). Those that may read a
pinned artifact take ``unpacked``, a function that returns the folder it is unpacked in (in the
workflow, a checkpoint), called only when an artifact is pinned.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path

import yaml

from . import alternating
from . import artifact as ka
from . import config as kc
from . import gpu_share, kvmodel, platforms, schema
from .comparisons import EXPERIMENTS as COMPARISON_EXPERIMENTS
from .provenance import config_hash

FIGURES = ["cold_warm", "restart", "prefix_sweep", "multiturn", "baseline", "serving", "random_overhead",
           "reload_vs_recompute", "break_even",
           "cross_instance", "miss", "tensor_parallel"]
#: tables built from another experiment's raw files (besides runs, cost and fidelity)
DERIVED_TABLES = {"reload_vs_recompute": "restart", "break_even": "restart", "tensor_parallel": "restart"}
#: figures drawn from more than their own table (``results/tables/<figure>.csv``): every table
#: each one reads, its own first
FIGURE_TABLES = {"restart": ["restart", "reload_vs_recompute"],
                 "break_even": ["break_even", "reload_vs_recompute"]}
#: the table of every comparison with the CI of its difference, from several experiments' runs
#: (kvreuse.comparisons)
COMPARISONS_TABLE = "comparisons"
#: tables of every run (the provenance of each, the cost), of the serving fidelity check, and
#: of what became of every configured run (kvreuse.accounting)
STUDY_TABLES = ["runs", "cost", "fidelity", "accounting", "interference"]
#: the source studies' claims (workflow/resources/cited.yaml) beside our measurements
#: (kvreuse.claims, rule claims): made from the tables its rules name, not from raw files
CITED = "workflow/resources/cited.yaml"
CLAIMS_TABLE = "results/tables/claims.csv"
#: when reuse helps (kvreuse.decision, rule decision): made from the tables its row sources read,
#: with the claims that workflow/resources/decision.yaml sets beside its rows
DECISION_LINKS = "workflow/resources/decision.yaml"
DECISION_TABLE = "results/tables/decision.csv"
#: committed archives of GPU hosts' job logs (the accounting reads why a run failed in them)
LOG_ARCHIVES = "results/gpu-logs/*.tgz"
FIGURE_TITLES = {
    "cold_warm": "Cold vs warm prefix (APC)",
    "restart": "Restart persistence",
    "prefix_sweep": "Prefix length",
    "multiturn": "Multi-turn chat",
    "baseline": "Baseline (no cache)",
    "serving": "Serving under load",
    "random_overhead": "Unique prompts (LMCache overhead)",
    "reload_vs_recompute": "Reload vs recompute after a restart",
    "break_even": "Break-even prefix length per store",
    "cross_instance": "Across instances: one LMCache server, two vLLMs",
    "miss": "Cache-miss overhead per prompt length",
    "tensor_parallel": "Reload vs recompute with tensor parallelism",
}
#: what `rule all` builds besides the tables and figures (the artifact is built on request:
#: `snakemake ... artifact`, README)
DOCUMENTS = ["results/notebooks/analysis.ipynb", "paper/build/kvreuse.pdf", "paper/build/kvreuse.md"]

Unpacked = Callable[[], str]


def _not_pinned() -> str:
    raise AssertionError("no artifact is pinned (artifact.source is empty)")


# -- the pinned artifact ---------------------------------------------------------------------
def artifact(config: dict) -> dict:
    """The ``artifact`` section with its defaults: doi, source and sha256 ("" when unset)."""
    given = schema.get(config, "artifact")
    return {k: schema.get(given, "artifact", k) for k in ("doi", "source", "sha256")} | given


def pinned(config: dict) -> bool:
    """With artifact.source set, the raw results come from that artifact and nothing is measured."""
    return bool(artifact(config)["source"])


def check_pinned(config: dict) -> None:
    """A pinned artifact's source is a local path or a Zenodo record file; a local one must have
    artifact.sha256 (ArtifactError / ArtifactChecksumError otherwise). Run before any job."""
    art = artifact(config)
    ka.check_source(art["source"])
    if not ka.is_remote(art["source"]):
        ka.verify(art["source"], art["sha256"])


def pinned_dir(config: dict) -> str:
    """Where the pinned artifact is unpacked: one folder per sha256."""
    root = schema.get(config["paths"], "paths", "artifacts")
    return f"{root}/{artifact(config)['sha256'].lower()[:16]}"


def artifact_citation(config: dict) -> dict:
    """What the write-up and the manifest cite (the results digest is added by the scripts)."""
    art = artifact(config)
    return {
        "doi": art["doi"] or None,
        "source": art["source"] or None,
        "sha256": art["sha256"].lower() if pinned(config) else None,
    }


def artifact_config(config: dict) -> dict:
    """The study's configuration as this invocation used it (for the manifest and its hash)."""
    return {**ka.study_config(config), "run_platforms": run_platforms(config)}


# -- what is measured and reported -----------------------------------------------------------
def run_platforms(config: dict) -> list[str]:
    """Platforms measured by this invocation: none when the results come from a pinned artifact."""
    return [] if pinned(config) else list(config["run_platforms"])


def report_platforms(config: dict) -> list[str]:
    return list(config["report_platforms"])


def experiments(config: dict) -> list[str]:
    """The configured experiments, in the study's order (config.EXPERIMENTS)."""
    return [e for e in kc.EXPERIMENTS if e in config["experiments"]]


def tables(config: dict) -> list[str]:
    return experiments(config) + STUDY_TABLES + list(DERIVED_TABLES) + [COMPARISONS_TABLE]


def claims_tables(config: dict, cited_path: str = CITED) -> list[str]:
    """The configured tables that cited.yaml's rules read (the claims rule's inputs)."""
    named = set()

    def walk(rule):
        if isinstance(rule, dict):
            if "table" in rule:
                named.add(rule["table"])
            for v in rule.values():
                walk(v)
        elif isinstance(rule, list):
            for v in rule:
                walk(v)

    for group in (yaml.safe_load(Path(cited_path).read_text()) or {}).get("claims", []):
        walk(group.get("ours"))
        for c in group["claims"]:
            walk(c.get("ours"))
    return [t for t in tables(config) if t in named]


def decision_tables(config: dict) -> list[str]:
    """The configured tables that the decision table's row sources read (and runs, for the model)."""
    from .decision import source_tables

    wanted = set(source_tables()) | {"runs"}
    return [t for t in tables(config) if t in wanted]


def decision_output_tokens(config: dict) -> dict[str, dict[str, int]]:
    """Per reported platform and configured experiment, the output length its requests ask for
    (``output_tokens`` of the experiment, else ``client.max_tokens``): the decision table says
    where a source study's differs."""
    return {p: {e: kc.client_config(config["client"], kc.experiment_params(config, p, e))["max_tokens"]
                for e in experiments(config)}
            for p in expected_platforms(config)}


#: the experiment parameter that says how many requests a workload keeps in flight at once (the
#: others send one request at a time, kvreuse.recorder)
IN_FLIGHT_PARAM = {"pressure": "max_concurrency", "multiturn_long": "n_clients", "chunk_sweep": "n_clients"}


def decision_in_flight(config: dict) -> dict[str, dict[str, int]]:
    """Per reported platform and configured experiment, how many requests it keeps in flight at
    once (IN_FLIGHT_PARAM, else 1): the decision table says where a source study's load differs."""
    return {p: {e: int(kc.experiment_params(config, p, e)[IN_FLIGHT_PARAM[e]]) if e in IN_FLIGHT_PARAM else 1
                for e in experiments(config)}
            for p in expected_platforms(config)}


def figures(config: dict) -> list[str]:
    """The figures of the configured tables (each figure is drawn from its table)."""
    made = set(tables(config))
    return [f for f in FIGURES if f in made]


def figure_title(figure: str) -> str:
    return FIGURE_TITLES.get(figure, figure)


def figure_tables(figure: str) -> list[str]:
    """The tables a figure is drawn from (its rule's inputs besides its script), its own first."""
    return [f"results/tables/{t}.csv" for t in FIGURE_TABLES.get(figure, [figure])]


def all_targets(config: dict) -> list[str]:
    return ([f"results/tables/{t}.csv" for t in tables(config)]
            + [f"results/figures/{f}.pdf" for f in figures(config)]
            + DOCUMENTS)


def model_dir(config: dict, platform: str, experiment: str | None = None) -> str:
    """The model folder a platform's runs (of ``experiment``: its own model, if it has one) serve."""
    return f"{config['paths']['models']}/{kc.model_name(config, platform, experiment)}"


def lmcache_dir(config: dict, platform: str) -> str:
    """The LMCache stores of a platform (and its preflight.json)."""
    return f"{config['paths']['lmcache']}/{platform}"


def gpu_problem(config: dict, gpu_names: list[str], why_none: str | None = None) -> str | None:
    """Why this machine cannot measure run_platforms, if it cannot: a GPU platform whose GPU
    is not among ``gpu_names`` (those this machine's jobs would see; ``why_none``: why there
    are none). None when every platform can run here."""
    missing = platforms.missing_gpus(run_platforms(config), gpu_names)
    if not missing:
        return None
    seen = ", ".join(gpu_names) if gpu_names else f"none: {why_none or 'no GPU'}"
    names = ", ".join(p.name for p in missing)
    return (f"run_platforms asks for {names} on this machine, but "
            + "; ".join(f"{p.name} needs an {p.gpu} GPU" if p.gpus == 1
                        else f"{p.name} needs {p.gpus} {p.gpu} GPUs" for p in missing)
            + f" (GPUs seen here: {seen}). Nothing was run and no file was touched. "
            f"Run on a node with that GPU (profiles/gpu-node), or submit the jobs to a cluster "
            f"(--profile profiles/pace), or remove {names} from run_platforms "
            f"(e.g. --config 'run_platforms=[\"cpu\"]') to rebuild from the committed results.")


# -- raw files -------------------------------------------------------------------------------
def run_targets(config: dict, experiment: str) -> list[str]:
    """Raw files that this invocation measures."""
    return [
        f"results/raw/{p}/{experiment}/{arm}.jsonl"
        for p in run_platforms(config)
        for arm in kc.arms_for(config, experiment, p)
    ]


def committed_targets(config: dict, experiment: str, root: Path | str | None = None) -> list[str]:
    """Raw files of other platforms, committed to the repository (e.g. the GPU host's runs)."""
    found = []
    measured = run_platforms(config)
    for p in report_platforms(config):
        if p not in measured:
            found += sorted(glob.glob(f"results/raw/{p}/{experiment}/*.jsonl", root_dir=root))
    return found


def meta_file(jsonl: str) -> str:
    """The provenance file beside a raw JSONL file."""
    return jsonl[: -len(".jsonl")] + ".meta.json"


def raw_inputs(config: dict, experiment: str, unpacked: Unpacked = _not_pinned,
               root: Path | str | None = None) -> list[str]:
    """An experiment's raw files (measured here, committed, or from the pinned artifact), then
    their metas."""
    if pinned(config):
        files = ka.raw_files(unpacked(), experiment, report_platforms(config))
    else:
        files = run_targets(config, experiment) + committed_targets(config, experiment, root)
    return files + [meta_file(f) for f in files]


def job_stems(config: dict, experiment: str, platform: str) -> list[str]:
    """The stems of an experiment's job logs and benchmark files on a platform: one per arm,
    or one job for all arms where they alternate (kvreuse.alternating)."""
    if alternating.alternates(experiment):
        return [alternating.JOB] if kc.arms_for(config, experiment, platform) else []
    return kc.arms_for(config, experiment, platform)


def benchmark_files(config: dict, unpacked: Unpacked = _not_pinned,
                    root: Path | str | None = None) -> list[str]:
    """Snakemake benchmark: files of the jobs measured here and of committed platforms."""
    if pinned(config):
        return ka.benchmark_files(unpacked(), report_platforms(config))
    files = [
        f"results/benchmarks/{p}/{e}/{stem}.tsv"
        for e in experiments(config)
        for p in run_platforms(config)
        for stem in job_stems(config, e, p)
    ]
    measured = run_platforms(config)
    for p in report_platforms(config):
        if p not in measured:
            files += sorted(glob.glob(f"results/benchmarks/{p}/*/*.tsv", root_dir=root))
    return files


def all_raw_inputs(config: dict, unpacked: Unpacked = _not_pinned,
                   root: Path | str | None = None) -> list[str]:
    """Every raw record and meta, and the runs' benchmark timings (the cost table's data)."""
    return (_every_raw_input(config, unpacked, root)
            + benchmark_files(config, unpacked, root))


def _every_raw_input(config: dict, unpacked: Unpacked, root) -> list[str]:
    return sorted({f for e in experiments(config) for f in raw_inputs(config, e, unpacked, root)})


def table_inputs(config: dict, table: str, unpacked: Unpacked = _not_pinned,
                 root: Path | str | None = None) -> list[str]:
    """The raw files (and metas) a table is made from."""
    if table in ("runs", "cost", "accounting", "interference"):
        return _every_raw_input(config, unpacked, root)
    if table == "fidelity":
        return raw_inputs(config, "serving", unpacked, root)
    if table == COMPARISONS_TABLE:
        files = [f for e in COMPARISON_EXPERIMENTS if e in experiments(config)
                 for f in raw_inputs(config, e, unpacked, root)]
        return sorted(f for f in files if f.endswith(".jsonl")) + sorted(f for f in files if f.endswith(".meta.json"))
    return raw_inputs(config, DERIVED_TABLES.get(table, table), unpacked, root)


def benchmark_inputs(config: dict, table: str, unpacked: Unpacked = _not_pinned,
                     root: Path | str | None = None) -> list[str]:
    """The benchmark timings a table reads: the cost table's only."""
    return benchmark_files(config, unpacked, root) if table == "cost" else []


def table_params(config: dict, table: str) -> dict:
    """Extra inputs of a derived table (reload_vs_recompute, break_even: the platforms' link
    bandwidths; cost: their GPU-time budgets, ``cost_target``)."""
    if table in ("reload_vs_recompute", "break_even"):
        return {"links_gb_s": {p: schema.get(pc, "platforms", p, "links_gb_s")
                               for p, pc in config["platforms"].items()}}
    if table == "cost":  # the platforms' GPU-time budgets to report against
        return {"cost_targets": {p: target for p, pc in config["platforms"].items()
                                 if (target := schema.get(pc, "platforms", p, "cost_target"))}}
    return {}


def attempts_files(root: Path | str | None = None) -> list[str]:
    """results/raw/<platform>/attempts.yaml: runs tried elsewhere that left no raw file."""
    return sorted(glob.glob("results/raw/*/attempts.yaml", root_dir=root))


# -- freshness and accounting (kvreuse.freshness, kvreuse.accounting) -------------------------
def expected_platforms(config: dict) -> list[str]:
    """The platforms whose runs the config asks for: report_platforms, then run_platforms."""
    return list(dict.fromkeys(report_platforms(config) + run_platforms(config)))


def expected_hashes(config: dict) -> dict[str, str]:
    """``platform/experiment/arm`` -> the config hash the CURRENT config gives that run, for
    every configured run (expected_platforms x experiments x their arms)."""
    from .freshness import run_key

    return {run_key(p, e, arm): run_params(config, e, p, arm)["config_hash"]
            for p in expected_platforms(config)
            for e in experiments(config)
            for arm in kc.arms_for(config, e, p)}


def archived(config: dict) -> list[dict]:
    """config.yaml's ``archived`` section: stale results kept on purpose, with their commit."""
    return list(config.get("archived") or [])


def table_freshness(config: dict, table: str) -> dict:
    """What a table needs to tell current runs from stale ones (aggregate.build's keywords):
    every table but cost (whose GPU-minutes were spent either way). With a pinned artifact,
    nothing here: its runs answer the config it was bundled with (:func:`pinned_freshness`)."""
    if table == "cost" or pinned(config):
        return {}
    return {"expected_hashes": expected_hashes(config), "archived": archived(config)}


def pinned_freshness(manifest: dict, table: str) -> dict:
    """table_freshness against the config a pinned artifact was bundled with (its manifest's
    ``config``), so that a rebuild keeps out exactly what the bundled tables kept out."""
    return table_freshness(manifest["config"], table)


def context_inputs(table: str, root: Path | str | None = None) -> list[str]:
    """The accounting's context: attempts.yaml files and the committed job-log archives."""
    if table != "accounting":
        return []
    return attempts_files(root) + sorted(glob.glob(LOG_ARCHIVES, root_dir=root))


# -- one run ---------------------------------------------------------------------------------
def run_params(config: dict, experiment: str, platform: str, arm: str) -> dict:
    """What one run rule needs from config; a change here reruns only the runs it touches."""
    name = kc.model_name(config, platform, experiment)
    params = kc.experiment_params(config, platform, experiment)
    spec = {
        "platform": platform,
        "experiment": experiment,
        "arm_name": arm,
        "arm": config["arms"][arm],
        "params": params,
        "model_name": name,
        "model": config["models"][name],
        "server": kc.server_config(config, platform, experiment),
        "client": kc.client_config(config["client"], params),  # output_tokens: the experiment's
        "seed": config["seed"],
        "lmcache_dir": lmcache_dir(config, platform),
    }
    spec["config_hash"] = config_hash(spec)
    return spec


def alternating_params(config: dict, experiment: str, platform: str) -> dict:
    """What the one job of an alternating experiment needs: each arm's run parameters (their
    config hashes are the arms' own, as for a job per arm) and the number of server runs."""
    params = kc.experiment_params(config, platform, experiment)
    return {"platform": platform, "experiment": experiment,
            "server_runs": schema.get(params, "experiments", experiment, "server_runs"),
            "arms": [run_params(config, experiment, platform, arm)
                     for arm in kc.arms_for(config, experiment, platform)]}


def alternating_outputs(config: dict, experiment: str, platform: str, ext: str) -> list[str]:
    """Every arm's raw file (``ext``: jsonl or meta.json) that an alternating experiment's one
    job on ``platform`` writes: the paths a job per arm would write."""
    return [f"results/raw/{platform}/{experiment}/{arm}.{ext}"
            for arm in kc.arms_for(config, experiment, platform)]


def uses_lmcache(config: dict, arm: str) -> bool:
    return config["arms"][arm].get("lmcache") is not None


def alternating_uses_lmcache(config: dict, experiment: str, platform: str) -> bool:
    """Whether an arm of an alternating experiment's job uses LMCache (it needs the preflight)."""
    return any(uses_lmcache(config, arm) for arm in kc.arms_for(config, experiment, platform))


def preflight_file(config: dict, platform: str) -> str:
    """The LMCache preflight of a platform (rule lmcache_store)."""
    return f"{lmcache_dir(config, platform)}/preflight.json"


def lmcache_runs(config: dict, platform: str) -> list[list[str]]:
    """[experiment, arm] pairs with an LMCache arm that this platform measures."""
    return [
        [e, arm]
        for e in experiments(config)
        for arm in kc.arms_for(config, e, platform)
        if uses_lmcache(config, arm)
    ]


def lmcache_preflight_params(config: dict, platform: str) -> dict:
    runs = lmcache_runs(config, platform)
    return {
        "store_root": lmcache_dir(config, platform),
        "runs": runs,
        "arms": {arm: config["arms"][arm] for _, arm in runs},
    }


# -- what a run job takes of a GPU node (its resources; caps: profiles/gpu-node) ------------
def job_resources(config: dict, experiment: str, platform: str, arms: list[str]) -> dict:
    """``gpu_pct`` (its share of the GPU), ``host_mem_gb`` and ``store_disk_gb`` (its stores)
    for a job that runs ``arms`` of ``experiment`` on ``platform`` (kvreuse.gpu_share)."""
    server = kc.server_config(config, platform, experiment)
    arm_cfgs = [config["arms"][a] for a in arms]
    remote_gb = 0.0
    if any(kc.is_remote_arm(a) for a in arm_cfgs):
        model = config["models"][kc.model_name(config, platform, experiment)]
        remote_gb = gpu_share.remote_store_gb(kc.experiment_params(config, platform, experiment),
                                              kvmodel.model_kv_bytes_per_token(model))
    return {"gpu_pct": gpu_share.gpu_pct(server, experiment),
            "host_mem_gb": gpu_share.host_mem_gb(server, experiment, arm_cfgs, remote_gb),
            "store_disk_gb": gpu_share.store_disk_gb(arm_cfgs)}
