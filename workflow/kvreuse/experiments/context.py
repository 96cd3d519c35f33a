"""What every experiment and runner of this package shares: the run's spec (:class:`RunSpec`),
the :class:`Context` an experiment works with, the prompt helpers (``shared``, ``n_cold``,
``warmup``, ``store_after_stop``), and a run's meta and files (``base_meta``, ``arm_plan``,
``write_not_run``, ``write_pair``)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from .. import models, provenance, redact, schema
from ..lmcache import store as lmcache_store
from ..loadgen import BenchServe
from ..plan import ServerPlan
from ..plan import plan as make_plan
from ..recorder import Recorder
from ..results import RequestRecord, RunMeta, meta_path, phase_name, write_meta, write_records
from ..servers import MAIN, Servers, now_iso
from ..workloads import PromptMaker, shared_prefix_prompts

log = logging.getLogger(__package__)  # kvreuse.experiments, as before the split

#: the warm-up prompts' prefix and suffix lengths in an experiment that has no
#: ``prefix_tokens`` / ``suffix_tokens`` key (prefix_sweep, multiturn, serving): not defaults
#: of a config key (where an experiment has the key, the schema requires it)
WARMUP_PREFIX_TOKENS = 256
WARMUP_SUFFIX_TOKENS = 16


@dataclass
class RunSpec:
    """Everything one run rule knows: where, what, with which arm, and where to write."""

    platform: str
    experiment: str
    arm_name: str
    arm: dict
    params: dict
    model_name: str
    model: dict
    model_dir: Path
    server: dict
    client: dict
    out_jsonl: Path
    log_dir: Path
    config_hash: str
    seed: int = 0
    repo_dir: Path = Path(".")
    lmcache_dir: Path | str | None = None  # the platform's LMCache store root


@dataclass
class Context:
    """What an experiment works with: the run's spec and plan, servers, recorder, load generator."""

    spec: RunSpec
    plan: ServerPlan
    servers: Servers
    recorder: Recorder
    loadgen: BenchServe | None
    prompts: PromptMaker

    @property
    def meta(self) -> RunMeta:
        return self.recorder.meta

    @property
    def lmcache(self) -> bool:
        return self.plan.lmcache is not None

    @property
    def offload(self) -> bool:
        """Whether the arm uses vLLM's own offloading (kvreuse.offload)."""
        return self.plan.offload is not None

    @property
    def connector(self) -> bool:
        """Whether the arm loads KV through a connector (LMCache or vLLM's offloading)."""
        return self.lmcache or self.offload

    def restart_lmcache_server(self) -> bool:
        """Whether a restart stops the LMCache server too (the arm's ``restart_lmcache_server``)."""
        return self.plan.lmcache_server is not None and schema.get(
            self.spec.arm, "arms", "*", "restart_lmcache_server")


def shared(c: Context, p: dict, name: str, n: int, prefix_tokens: int | None = None) -> list[list[int]]:
    """``n`` prompts sharing one prefix (``prefix_tokens``, default the experiment's)."""
    return shared_prefix_prompts(c.prompts, name=name, n=n,
                                 prefix_tokens=prefix_tokens or p["prefix_tokens"],
                                 suffix_tokens=p["suffix_tokens"],
                                 compat=schema.get(p, "experiments", c.spec.experiment, "compat"))


def n_cold(c: Context, p: dict) -> int:
    """How many never-seen prefixes each cold condition is measured on (``n_cold``; runs made
    before the key measured one, the schema's default)."""
    return schema.get(p, "experiments", c.spec.experiment, "n_cold")


def warmup_sizes(p: dict) -> tuple[int, int]:
    """A warm-up prompt's prefix and suffix lengths: the experiment's ``prefix_tokens`` and
    ``suffix_tokens`` where it has them, else :data:`WARMUP_PREFIX_TOKENS` and
    :data:`WARMUP_SUFFIX_TOKENS`."""
    return p.get("prefix_tokens", WARMUP_PREFIX_TOKENS), p.get("suffix_tokens", WARMUP_SUFFIX_TOKENS)


async def warmup(c: Context, *, after: str | None = None, instance: str | None = None) -> None:
    """``warmup_requests`` requests with prompts used nowhere else, right after a server start,
    so its one-time costs stay out of the measurement. ``after``: which later start this
    follows (``post_restart``, ``cold_reference``, ``instance_b``): its own never-seen prompts
    (a re-sent warm-up prompt would be reloaded from a store, and would warm that path
    instead), phase ``warmup_<after>``. ``instance``: the named vLLM instance it goes to
    (recorded in the phase), else the run's one (kvreuse.servers.MAIN)."""
    p = c.spec.params
    n = schema.get(p, "experiments", c.spec.experiment, "warmup_requests")
    if n:
        tag = f"warmup/{after}" if after else "warmup"
        prefix, suffix = warmup_sizes(p)
        prompts = [c.prompts.tokens(f"{tag}/{i}", prefix) + c.prompts.tokens(f"{tag}/q{i}", suffix)
                   for i in range(n)]
        await c.recorder.phase(c.servers.target(instance or MAIN), "warmup", prompts,
                               after_restart=after == "post_restart",
                               name=phase_name("warmup", after) if after else None, instance=instance)


def store_after_stop(c: Context) -> None:
    """The store's files and bytes (LMCache's, or the file tier of vLLM's offloading), read
    while no vLLM runs."""
    c.meta.store_after_stop = lmcache_store.list_store(c.plan)


# -- one run's meta and files ---------------------------------------------------------------
def base_meta(spec: RunSpec, plan: ServerPlan) -> RunMeta:
    model_manifest = models.read_manifest(spec.model_dir)
    return RunMeta(
        status="ok", platform=spec.platform, experiment=spec.experiment,
        arm=spec.arm_name, arm_config=spec.arm, params=spec.params,
        accelerator=provenance.accelerator(), versions=provenance.versions(),
        model={k: v for k, v in model_manifest.items() if k != "files"} | {"spec": spec.model},
        server={"vllm_args": plan.vllm_args, "env": redact.env_for_record(plan.env),
                "lmcache_config": plan.lmcache_config,
                "lmcache_server": plan.lmcache_server and plan.lmcache_server.get("argv"),
                # Redis or LMCache's remote server: kind, url, argv, data_dir, version
                "remote_store": plan.remote_store and {k: v for k, v in plan.remote_store.items()
                                                       if k != "health_url"},
                "notes": plan.notes},
        client=spec.client, config_hash=spec.config_hash,
        git_commit=provenance.git_commit(spec.repo_dir), started_at=now_iso(), finished_at=None,
        phases={})


def gpu_memory_utilization(spec: RunSpec) -> float | None:
    """The experiment's own share of the GPU for each vLLM instance (its key
    ``gpu_memory_utilization``: cross_instance, whose two instances share one GPU), or None for
    an experiment without that key or with it null (the platform's ``server.extra_args``
    decide)."""
    path = ("experiments", spec.experiment, "gpu_memory_utilization")
    return schema.get(spec.params, *path) if schema.defines(*path) else None


#: an experiment's keys that set a vLLM flag of its own (in place of the platform's, if any):
#: the pressure experiment's shrunk KV cache and its block size
EXPERIMENT_FLAGS = {"num_gpu_blocks": "--num-gpu-blocks-override", "block_size": "--block-size"}


def experiment_flags(spec: RunSpec) -> dict[str, str]:
    """The vLLM flags the experiment's keys of :data:`EXPERIMENT_FLAGS` set (null: none)."""
    out = {}
    for key, flag in EXPERIMENT_FLAGS.items():
        path = ("experiments", spec.experiment, key)
        if schema.defines(*path) and schema.get(spec.params, *path) is not None:
            out[flag] = str(schema.get(spec.params, *path))
    return out


def arm_plan(spec: RunSpec, run_dir: Path, has_cuda: bool | None = None) -> ServerPlan:
    """The arm's servers for one run (LMCache arms: a new store folder and ports each time)."""
    return make_plan(spec.arm_name, spec.arm, server=spec.server, model=spec.model,
                     run_dir=run_dir, has_cuda=has_cuda,
                     store_root=spec.lmcache_dir and Path(spec.lmcache_dir) / spec.experiment,
                     gpu_memory_utilization=gpu_memory_utilization(spec), flags=experiment_flags(spec))


def write_not_run(spec: RunSpec, meta: RunMeta, reason: str) -> dict:
    """An arm that cannot run here: an empty JSONL and a meta with status not_run and why."""
    log.warning("%s/%s on %s not run: %s", spec.experiment, spec.arm_name, spec.platform, reason)
    meta.status, meta.reason, meta.finished_at = "not_run", reason, now_iso()
    write_pair(spec.out_jsonl, [], meta)
    return meta.to_dict()


def finish_meta(meta: RunMeta, records: list[RequestRecord], starts: list[dict],
                stops: list[dict], gpu_share: dict | None = None) -> None:
    """The meta's end of run: when, the servers' starts and stops, requests and errors, and
    the job's waits for the GPU node's measurement lock (kvreuse.gpu_share), if it had one."""
    meta.finished_at = now_iso()
    meta.gpu_share = gpu_share
    meta.server_starts, meta.stops = starts, stops
    meta.n_requests = len(records)
    meta.n_errors = sum(1 for r in records if r.error)
    meta.server["starts"] = len([x for x in starts if x["process"] == "vllm"])


def write_pair(out_jsonl: Path, records: list[RequestRecord], meta: RunMeta) -> None:
    """Records, then meta, secrets scrubbed (checked against the schema as they are written):
    a complete pair, or (on any failure) neither."""
    secrets = redact.secret_values()
    try:
        write_records(out_jsonl, redact.scrub([dataclasses.asdict(r) for r in records], secrets))
        write_meta(meta_path(out_jsonl), redact.scrub(meta.to_dict(), secrets))
    except BaseException:
        Path(out_jsonl).unlink(missing_ok=True)
        meta_path(out_jsonl).unlink(missing_ok=True)
        raise
