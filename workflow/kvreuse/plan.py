"""An arm is a server and store configuration; this module turns one into processes and flags.

Adding an arm is a config entry (``arms:`` in config.yaml) and, for a new kind of store, one
small function here, in the kvreuse.lmcache package (which fills the plan: lmcache.flags) or in
kvreuse.offload (vLLM's own offloading: offload.apply).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import offload as vllm_offload
from . import schema
from .lmcache import flags as lmcache_flags
from .lmcache.flags import kv_transfer_json

__all__ = ["ServerPlan", "base_vllm_args", "cuda_available", "kv_transfer_json", "plan", "set_flag"]

#: vLLM's share of the GPU's memory; an experiment that runs two instances on one GPU sets its own
GPU_MEMORY_FLAG = "--gpu-memory-utilization"
#: vLLM's tensor parallelism: kvreuse sets it from ``server.tensor_parallel`` (config.check
#: refuses it, and its short form, in ``extra_args``)
TENSOR_PARALLEL_FLAGS = ("--tensor-parallel-size", "-tp")


@dataclass
class ServerPlan:
    """What to start for one arm: vLLM's flags and environment, and why it cannot run here."""

    vllm_args: list[str]
    env: dict[str, str]
    not_run_reason: str | None = None
    lmcache_config: dict | None = None
    lmcache_server: dict | None = None  # a standalone LMCache server (MP mode), if any
    notes: list[str] = field(default_factory=list)
    lmcache: dict | None = None  # LMCache arms: mode, store paths, ports (lmcache.flags.apply)
    offload: dict | None = None  # vLLM's offloading arms: tiers, store paths (offload.apply)
    #: a remote store the run starts before vLLM and keeps across its restarts (Redis,
    #: LMCache's remote server: kvreuse.remote_store.spec), if the arm has one
    remote_store: dict | None = None


def cuda_available() -> bool:
    try:
        import torch  # heavy and optional: only where the question is asked
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def set_flag(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag`` given once, as ``flag value`` at the end: every earlier
    ``flag value`` or ``flag=value`` (e.g. from ``server.extra_args``) is taken out, so the
    flag is replaced, not duplicated."""
    out, i = [], 0
    while i < len(args):
        if args[i] == flag:
            i += 2  # the flag and its value
            continue
        if not args[i].startswith(flag + "="):
            out.append(args[i])
        i += 1
    return out + [flag, value]


def base_vllm_args(arm: dict, server: dict, model: dict,
                   gpu_memory_utilization: float | None = None) -> list[str]:
    """vLLM's flags for an arm: prefix caching, the model's length and seed, the platform's
    tensor parallelism (``server.tensor_parallel``: 1 on one GPU, the same flag for every
    platform) and ``server.extra_args``; ``gpu_memory_utilization`` (an experiment's own, e.g.
    two instances on one GPU) replaces the one of ``extra_args``."""
    apc = schema.get(arm, "arms", "*", "prefix_caching")
    args = ["--enable-prefix-caching" if apc
            else "--no-enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--max-model-len", str(server["max_model_len"]),
            "--seed", str(server.get("seed", 0)),
            TENSOR_PARALLEL_FLAGS[0], str(schema.get(server, "server", "tensor_parallel"))]
    if model.get("source") == "dummy":
        args += ["--load-format", "dummy"]
    if apc:
        # a hash that does not depend on the process, so keys match across restarts
        args += ["--prefix-caching-hash-algo", schema.get(server, "server", "prefix_caching_hash_algo")]
    args += [str(a) for a in schema.get(server, "server", "extra_args")]
    if gpu_memory_utilization is not None:
        args = set_flag(args, GPU_MEMORY_FLAG, str(gpu_memory_utilization))
    return args


def plan(arm_name: str, arm: dict, *, server: dict, model: dict, run_dir: Path,
         has_cuda: bool | None = None, store_root: Path | str | None = None,
         gpu_memory_utilization: float | None = None, flags: dict[str, str] | None = None,
         **lmcache_kw) -> ServerPlan:
    """The arm's plan; ``gpu_memory_utilization``: every vLLM instance's share of the GPU
    (an experiment's own), in place of the platform's ``--gpu-memory-utilization``; ``flags``:
    an experiment's own vLLM flags and values (e.g. ``--num-gpu-blocks-override``), each in
    place of the same flag in the platform's ``extra_args``."""
    env = {str(k): str(v) for k, v in schema.get(server, "server", "env").items()}
    env.setdefault("PYTHONHASHSEED", "0")
    args = base_vllm_args(arm, server, model, gpu_memory_utilization)
    for flag, value in (flags or {}).items():
        args = set_flag(args, flag, value)
    p = ServerPlan(vllm_args=args, env=env)
    if arm.get("lmcache"):
        if not (cuda_available() if has_cuda is None else has_cuda):
            p.not_run_reason = "LMCache needs CUDA"
            return p
        lmcache_flags.apply(p, arm_name, arm["lmcache"], run_dir=run_dir, store_root=store_root,
                            redis_server=schema.get(server, "server", "redis_server"), **lmcache_kw)
    elif arm.get("offload"):
        if not (cuda_available() if has_cuda is None else has_cuda):
            p.not_run_reason = vllm_offload.NOT_RUN_REASON
            return p
        vllm_offload.apply(p, arm_name, arm["offload"], run_dir=run_dir, store_root=store_root,
                           run_id=lmcache_kw.get("run_id"))
    return p
