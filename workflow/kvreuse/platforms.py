"""The platforms a study measures: one list, read by the rules (the ``{platform}`` wildcard),
the figures (their order), the SLURM profile (profiles/pace checks its table against it) and
the config schema (its ``platform_name`` enum is tested against it).

A platform is a class of machine: ``cpu``, or a GPU model and how many of its GPUs one job
gets (``gpus``: 1, or 2, 4, 8 for a model that needs tensor parallelism, ``h200x4``; the vLLM
it serves with ``platforms.<p>.server.tensor_parallel`` of config.yaml). :func:`missing_gpus`
says which platforms cannot be measured on this machine, :func:`gpu_count_problem` why a job
cannot start with the GPUs it sees.

Adding a platform: a :class:`Platform` here, its entry under ``platforms:`` in config.yaml, the
name in the schema's ``platform_name`` enum, and its partition in profiles/pace (the tests say
which is missing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    name: str  #: as config.yaml and results/raw/<name>/ spell it
    gpu: str | None  #: the GPU model its runs need, as a word of nvidia-smi's name; None: the CPU
    gpus: int = 1  #: GPUs of that model one job gets, on one node (tensor parallelism)

    def matches(self, gpu_name: str) -> bool:
        """Whether a GPU that nvidia-smi calls ``gpu_name`` is this platform's model
        (``H200`` is in "NVIDIA H200", not in "NVIDIA GH200 480GB"; ``L40S`` not in "NVIDIA L40")."""
        return self.gpu is not None and re.search(rf"\b{re.escape(self.gpu)}\b", gpu_name, re.I) is not None


#: in the order figures draw them
PLATFORMS = (
    Platform("cpu", None),
    Platform("h100", "H100"),
    Platform("h200", "H200"),
    Platform("a100", "A100"),
    Platform("l40s", "L40S"),
    # a model that does not fit one GPU (Llama-3.1-70B): N H200 of one node per job
    Platform("h200x2", "H200", gpus=2),
    Platform("h200x4", "H200", gpus=4),
    Platform("h200x8", "H200", gpus=8),
)
NAMES = tuple(p.name for p in PLATFORMS)
BY_NAME = {p.name: p for p in PLATFORMS}


def needs_gpu(name: str) -> bool:
    return BY_NAME[name].gpu is not None


def visible_gpus() -> tuple[list[str], str | None]:
    """The names of the GPUs that jobs started here would see, and, when there are none, why.

    nvidia-smi lists the node's GPUs (in a SLURM allocation, those of the allocation); an empty
    CUDA_VISIBLE_DEVICES (or -1) hides them all. Needs neither torch nor CUDA in this process.
    """
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return [], f"CUDA_VISIBLE_DEVICES={hidden!r} hides every GPU"
    if not shutil.which("nvidia-smi"):
        return [], "no nvidia-smi on PATH (no NVIDIA driver on this machine)"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return [], f"nvidia-smi failed: {e}"
    if out.returncode != 0:
        return [], f"nvidia-smi failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()}"
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names, None if names else "nvidia-smi lists no GPU"


def gpus(name: str) -> int:
    """How many GPUs one job of the platform gets (0 for the CPU)."""
    return BY_NAME[name].gpus if needs_gpu(name) else 0


def missing_gpus(platforms, gpu_names) -> list[Platform]:
    """The platforms of ``platforms`` (names) that need more GPUs of their model than
    ``gpu_names`` holds (one for most; ``h200x4``: four H200)."""
    return [BY_NAME[p] for p in platforms
            if needs_gpu(p) and sum(BY_NAME[p].matches(g) for g in gpu_names) < BY_NAME[p].gpus]


def visible_gpu_count(gpu_names: list[str]) -> int:
    """How many of the GPUs nvidia-smi lists (``gpu_names``) a process started here may use:
    all, or as many as a non-empty CUDA_VISIBLE_DEVICES names (nvidia-smi ignores it; SLURM sets
    it to the job's GPUs)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is None:
        return len(gpu_names)
    named = [d for d in hidden.split(",") if d.strip() and d.strip() != "-1"]
    return min(len(named), len(gpu_names))


def gpu_count_problem(platform: str, tensor_parallel: int, gpu_names: list[str],
                      why_none: str | None = None,
                      instance_devices: dict[str, list[int]] | None = None) -> str | None:
    """Why a job of ``platform`` cannot start vLLM with ``tensor_parallel`` GPUs, or its
    instances on the GPUs ``instance_devices`` names (instance -> indices into the job's GPUs,
    :func:`instance_cuda_devices`), given the GPUs nvidia-smi lists (``gpu_names``; ``why_none``:
    why none); None when it can (a CPU platform always can)."""
    if not needs_gpu(platform):
        return None
    seen = visible_gpu_count(gpu_names)
    pinned = sorted({i for d in (instance_devices or {}).values() for i in d})
    if seen >= tensor_parallel and (not pinned or pinned[-1] < seen):
        return None
    listed = ", ".join(gpu_names) if gpu_names else f"none: {why_none or 'no GPU'}"
    sees = (f"this job sees {seen} GPU{'s' if seen != 1 else ''} (nvidia-smi lists {listed}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Nothing was run.")
    if seen >= tensor_parallel:
        named = ", ".join(f"{inst} on {d}" for inst, d in instance_devices.items())
        return (f"platform {platform}: the experiment pins its vLLM instances to the job's GPUs "
                f"({named}: instance_devices), which needs {pinned[-1] + 1} GPUs, but {sees} "
                f"Give the job {pinned[-1] + 1} GPUs of one node (profiles/pace: "
                f"CLUSTER.platforms.{platform}.gpus) or change the experiment's instance_devices.")
    return (f"platform {platform} serves with tensor_parallel {tensor_parallel} (vLLM "
            f"--tensor-parallel-size {tensor_parallel}: one GPU per rank), but {sees} "
            f"Give the job {tensor_parallel} GPUs of one node (profiles/pace: "
            f"CLUSTER.platforms.{platform}.gpus) or lower platforms.{platform}.server.tensor_parallel.")


def instance_cuda_devices(indices: list[int], job_devices: str | None = None) -> str:
    """CUDA_VISIBLE_DEVICES for a process pinned to the job's GPUs ``indices``: the entries at
    those positions of the job's own CUDA_VISIBLE_DEVICES (``job_devices``, default the
    environment's: SLURM's GPUs, e.g. "2,5", or UUIDs), or the indices themselves where the job
    has none (every GPU of the node is the job's). ValueError for an index the job does not have."""
    job = os.environ.get("CUDA_VISIBLE_DEVICES") if job_devices is None else job_devices
    if job is None or not job.strip():
        return ",".join(str(i) for i in indices)
    named = [d.strip() for d in job.split(",") if d.strip()]
    missing = [i for i in indices if i >= len(named)]
    if missing:
        raise ValueError(f"GPU index {missing[0]} of the job's GPUs, but the job has {len(named)} "
                         f"(CUDA_VISIBLE_DEVICES={job!r})")
    return ",".join(named[i] for i in indices)
