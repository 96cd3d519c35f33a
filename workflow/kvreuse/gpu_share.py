"""Several run jobs on one GPU (profiles/gpu-node): what each job takes of the node, and the
lock that keeps their measurements apart.

A vLLM server spends most of its start importing Python and spawning its engine (on the H200,
about 37 of 46 s), while the GPU idles. On one lent GPU node, jobs may therefore share the GPU:
each vLLM with a fixed KV cache (``--kv-cache-memory-bytes``, no memory profiling that another
process could disturb), at most ``platforms.<p>.server.jobs_per_gpu`` jobs at once (the rule's
``gpu_pct`` resource against the profile's cap of 100), and their host memory and store disk
within the profile's caps (``host_mem_gb``, ``store_disk_gb``).

Measurements never overlap: a job holds :class:`MeasureLock` (an exclusive ``flock`` on the file
named by :data:`LOCK_ENV`) from the moment its first server is ready until its last one has
stopped, so another job's server may be *starting* meanwhile but no two jobs send requests at
once. Each run's meta records its waits (``gpu_share``), and aggregation measures what the
overlapping starts cost (kvreuse.interference). Without :data:`LOCK_ENV` (SLURM: one GPU per
job) the lock does nothing.
"""

from __future__ import annotations

import fcntl
import math
import os
import time
from pathlib import Path

from . import schema

LOCK_ENV = "KVREUSE_MEASURE_LOCK"
#: the profile's cap on the ``gpu_pct`` resource: one GPU
GPU_PCT = 100
#: host memory of one vLLM server process tree (API server + engine core), GiB, on top of
#: the arm's own stores (measured on the H200 host: 6-9 GiB resident per server)
VLLM_HOST_MEM_GB = 10


class MeasureLock:
    """The node-wide lock around a job's measurements; a no-op without :data:`LOCK_ENV`."""

    def __init__(self, path: str | os.PathLike | None = None):
        path = path if path is not None else os.environ.get(LOCK_ENV)
        self.path = Path(path) if path else None
        self._fd: int | None = None
        self._acquired_mono = 0.0
        self.waits: list[dict] = []  # {at (epoch s), waited_s, held_s}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self.path is None or self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        t0 = time.monotonic()
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd, self._acquired_mono = fd, time.monotonic()
        self.waits.append({"at": round(time.time(), 3), "waited_s": round(self._acquired_mono - t0, 3),
                           "held_s": None})

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        self.waits[-1]["held_s"] = round(time.monotonic() - self._acquired_mono, 3)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def as_meta(self) -> dict | None:
        """The meta's ``gpu_share`` block: None when no lock was configured."""
        if self.path is None:
            return None
        return {"lock": str(self.path), "holds": list(self.waits),
                "waited_s_total": round(sum(w["waited_s"] for w in self.waits), 3)}


# -- what a job takes of the node (the run rules' resources) --------------------------------
def vllm_instances(experiment: str) -> int:
    """vLLM servers a job of ``experiment`` holds at once (cross_instance: A and B)."""
    return 2 if experiment == "cross_instance" else 1


def gpu_pct(server: dict, experiment: str) -> int:
    """The share of one GPU a job takes: 100 / ``jobs_per_gpu`` per vLLM instance. A server
    with ``tensor_parallel`` > 1 (jobs_per_gpu 1, config check) takes all 100: on a node with
    that many GPUs, the profile's cap of 100 lets it run alone (the SLURM profile asks for its
    GPUs instead: CLUSTER.platforms.<p>.gpus)."""
    per_gpu = schema.get(server, "server", "jobs_per_gpu")
    return min(GPU_PCT, GPU_PCT // per_gpu * vllm_instances(experiment))


def store_gb(arms: list[dict]) -> tuple[float, float]:
    """Host memory and disk (GiB) the stores of these arms take: LMCache's CPU buffer and its
    disk or file store, vLLM offloading's CPU tier and file tier."""
    mem = disk = 0.0
    for arm in arms:
        if arm.get("lmcache"):
            lm = arm["lmcache"]
            mem = max(mem, float(schema.get(lm, "arms", "*", "lmcache", "cpu_gb")))
            if schema.get(lm, "arms", "*", "lmcache", "store") in ("local_disk", "fs"):
                disk = max(disk, float(schema.get(lm, "arms", "*", "lmcache", "disk_gb")))
        if arm.get("offload"):
            # vLLM's file tier has no size of its own: it holds what the CPU tier was given
            off = arm["offload"]
            size = float(schema.get(off, "arms", "*", "offload", "cpu_gb"))
            mem = max(mem, size)
            if "fs" in off["tiers"]:
                disk = max(disk, size)
    return mem, disk


def host_mem_gb(server: dict, experiment: str, arms: list[dict], remote_gb: float = 0.0) -> int:
    """The stores' memory (``remote_gb``: a remote store's, :func:`remote_store_gb`) and
    VLLM_HOST_MEM_GB per vLLM instance and GPU it spans (a server with tensor_parallel N runs a
    worker process per GPU; N x VLLM_HOST_MEM_GB is an upper estimate, not measured: no run
    with several GPUs yet)."""
    workers = vllm_instances(experiment) * schema.get(server, "server", "tensor_parallel")
    return math.ceil(store_gb(arms)[0] + remote_gb + VLLM_HOST_MEM_GB * workers)


def remote_store_gb(params: dict, bytes_per_token: int | None) -> float:
    """Host memory (GiB) of the ``remote`` experiment's remote store (Redis, LMCache's remote
    server: neither has a size of its own, both outlive vLLM's restart and keep every prompt's
    KV): the warm-ups after each of its two vLLM starts, the populated prompts and the
    never-seen misses, each counted at a full prompt's length (an upper bound: a warm-up may
    be shorter). 0 where the model's KV bytes per token are not known."""
    if not bytes_per_token:
        return 0.0
    n = (2 * schema.get(params, "experiments", "remote", "warmup_requests")
         + 2 * schema.get(params, "experiments", "remote", "n_cold"))
    return n * (params["prefix_tokens"] + params["suffix_tokens"]) * bytes_per_token / 1024 ** 3


def store_disk_gb(arms: list[dict]) -> int:
    return math.ceil(store_gb(arms)[1])
