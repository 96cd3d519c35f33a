"""GPU memory that processes hold, from nvidia-smi: what a server's process group holds (MiB).

An LMCache server keeps the GPU memory a stopped vLLM registered with it (measured on the
H100 and the H200: profiles/gpu-node/notes/README.md); kvreuse.servers records the server's
memory just before and just after each vLLM stop with :func:`group_mib`.

nvidia-smi names processes by their pid as the host sees them; in a container with its own pid
namespace those pids are not ours and the sum is 0. Where nvidia-smi is absent or fails, the
answer is None (nothing known), never 0.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from . import procs

log = logging.getLogger(__name__)

QUERY = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]


def used_mib_by_pid(timeout_s: float = 10.0) -> dict[int, float] | None:
    """GPU memory (MiB) per process that uses a GPU (summed over GPUs); None without nvidia-smi
    or when it fails."""
    if not shutil.which(QUERY[0]):
        return None
    try:
        r = subprocess.run(QUERY, capture_output=True, text=True, timeout=timeout_s)
    except (subprocess.SubprocessError, OSError) as e:
        log.warning("nvidia-smi failed: %s", e)
        return None
    if r.returncode:
        log.warning("nvidia-smi failed (exit %d): %s", r.returncode, (r.stderr or r.stdout).strip()[-300:])
        return None
    out: dict[int, float] = {}
    for line in r.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2:
            continue
        try:
            pid, mib = int(parts[0]), float(parts[1])
        except ValueError:  # "[N/A]" and the like: not a number nvidia-smi knows
            continue
        out[pid] = out.get(pid, 0.0) + mib
    return out


def group_mib(pgid: int) -> float | None:
    """GPU memory (MiB) held by the live members of process group ``pgid``; None where
    nvidia-smi cannot tell."""
    usage = used_mib_by_pid()
    if usage is None:
        return None
    return float(sum(usage.get(pid, 0.0) for pid in procs.group_members(pgid)))
