"""Whether a run's LMCache ran on its compiled CUDA kernels: one word per run, and the arm's
label with a visible mark where they did not load, for every table and figure.

The word comes from the run's meta (``meta.lmcache``, written by kvreuse.lmcache.logs.finish):

``loaded``        LMCache's compiled kernels loaded (``cuda_kernels``: loaded)
``fallback``      they did not: LMCache ran its torch fallback (logged by LMCache, or found by
                  the import probe); for alternating runs, if any server run fell back
``unknown``       the run recorded the probe, which found no kernel module at all
``not recorded``  an LMCache run whose meta says nothing of the kernels (runs made before the
                  probe); nothing is guessed from versions, which do not say whether they loaded
``no LMCache``    no LMCache ran: an arm without LMCache, or a run that did not run
"""

from __future__ import annotations

from .results import RunMeta

#: (no LMCache is not written "n/a": pandas reads that back as a missing value)
LOADED, FALLBACK, UNKNOWN, NOT_RECORDED, NOT_APPLICABLE = ("loaded", "fallback", "unknown", "not recorded",
                                                           "no LMCache")
#: the mark an arm's label gets where its kernels are not known to have loaded
MARKS = {FALLBACK: "torch fallback", UNKNOWN: "kernels unknown", NOT_RECORDED: "kernels not recorded"}


def _recorded(block: dict) -> str | None:
    """The kernel state one ``lmcache`` block (or one server run's) records, None if none."""
    state = block.get("cuda_kernels")
    if state in (LOADED, FALLBACK, UNKNOWN):
        return state
    if block.get("fallback_log_line_seen") is True:  # LMCache's own log said so
        return FALLBACK
    probe = (block.get("kernel_probe") or {}).get("kernels")
    return probe if probe in (LOADED, FALLBACK, UNKNOWN) else None


def status(meta: RunMeta) -> str:
    """The run's kernel state (the words of this module's docstring)."""
    if (meta.arm_config or {}).get("lmcache") is None or meta.status != "ok":
        return NOT_APPLICABLE
    block = meta.lmcache or {}
    runs = [r for r in block.get("server_runs") or [] if isinstance(r, dict)] or [block]
    states = [_recorded(r) for r in runs]
    if FALLBACK in states:
        return FALLBACK
    if None in states:
        return NOT_RECORDED
    return UNKNOWN if UNKNOWN in states else LOADED


def arm_label(arm: str, state: str) -> str:
    """The arm as tables and figures show it: ``lmcache_cpu (torch fallback)`` where the
    kernels did not load (or are not known to have), else the arm's name."""
    mark = MARKS.get(state)
    return f"{arm} ({mark})" if mark else arm


def run_columns(meta: RunMeta) -> dict:
    """The columns a table's row of a run starts with: which run (platform, arm, its label with
    the kernel mark), whether it ran and why not, and its kernel state."""
    state = status(meta)
    return {"platform": meta.platform, "arm": meta.arm, "arm_label": arm_label(meta.arm, state),
            "status": meta.status, "reason": meta.reason or "", "lmcache_kernels": state}
