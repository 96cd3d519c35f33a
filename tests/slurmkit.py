"""What the SLURM profile's tests and its dry-run benchmark share: the four GPU classes with
the partition and GPU type each must reach, and a scratch copy of the checkout to run in."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: platform -> (partition, GPU type): profiles/pace's defaults, as the SLURM issue asks
GPU_CLASSES = {"h200": ("gpu-h200", "H200"), "h100": ("gpu-h100", "H100"),
               "a100": ("gpu-a100", "A100"), "l40s": ("gpu-l40s", "L40S")}
#: platform -> (partition, GPU type, GPUs per job): the classes with several GPUs of one node
#: (tensor parallelism, the 70B model), also profiles/pace's defaults
MULTI_GPU_CLASSES = {"h200x2": ("gpu-h200", "H200", 2), "h200x4": ("gpu-h200", "H200", 4),
                     "h200x8": ("gpu-h200", "H200", 8)}


def link_checkout(work: Path) -> Path:
    """``work`` holding links to the checkout's entries, with results/ and resources/ of its own
    (empty): snakemake there sees every job, and the checkout's results stay untouched."""
    work.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if not entry.name.startswith(".") and entry.name not in ("results", "resources"):
            (work / entry.name).symlink_to(entry)
    return work
