"""The platforms a study measures: one list, read by the rules (the ``{platform}`` wildcard),
the figures (their order), the SLURM profile (profiles/pace checks its table against it) and
the config schema (its ``platform_name`` enum is tested against it).

A platform is a class of machine: ``cpu``, or a GPU model. Its runs are made on one GPU of that
model; :func:`missing_gpus` says which platforms cannot be measured on this machine.

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


def missing_gpus(platforms, gpu_names) -> list[Platform]:
    """The platforms of ``platforms`` (names) that need a GPU none of ``gpu_names`` is."""
    return [BY_NAME[p] for p in platforms
            if needs_gpu(p) and not any(BY_NAME[p].matches(g) for g in gpu_names)]
