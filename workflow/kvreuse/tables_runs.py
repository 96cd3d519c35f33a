"""The tables about the runs themselves: ``runs_table`` (every run, its provenance and
freshness) and ``cost_table`` (GPU-minutes and server starts, from Snakemake's benchmark files,
``read_benchmarks``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import alternating, interference, kernels
from .freshness import Freshness
from .results import RunMeta


def _vllm_starts(m: RunMeta) -> list[float]:
    """The run's vLLM starts: ``vllm``, or ``vllm-a`` and ``vllm-b`` where a run has two
    instances (cross_instance); not the LMCache server's."""
    return [s["startup_s"] for s in m.server_starts
            if s["process"] == "vllm" or s["process"].startswith("vllm-")]


def _lmcache_server_mib(m: RunMeta) -> tuple[float, float]:
    """The LMCache server's GPU memory (MiB) just before and just after the run's first vLLM
    stop that recorded it (kvreuse.servers); NaN where none did or nvidia-smi could not tell."""
    for stop in m.stops:
        mib = stop.get("lmcache_server_gpu_mib")
        if mib:
            return tuple(np.nan if mib.get(k) is None else float(mib[k]) for k in ("before", "after"))
    return np.nan, np.nan


def runs_table(metas: list[RunMeta], fresh: list[Freshness] | None = None) -> pd.DataFrame:
    """Every run and its provenance; with ``fresh``, whether it answers the current config
    (``freshness``: current | stale | archived, the expected hash beside the recorded one).
    Arms with an LMCache server: the server's GPU memory just before and just after the first
    vLLM stop (``lmcache_server_gpu_mib_before_stop``, ``..._after_stop``): what it keeps of a
    stopped vLLM. A run whose job took server runs kept from an earlier start
    (kvreuse.experiments.server_runs) says how many (``server_runs_taken``) and, where they were
    made by another commit or on another GPU than the run's own, which (``taken_commits``,
    ``taken_gpus``: comma-separated)."""
    rows = []
    for i, m in enumerate(metas):
        acc, v, model = m.accelerator or {}, m.versions or {}, m.model or {}
        starts = _vllm_starts(m)
        mib_before, mib_after = _lmcache_server_mib(m)
        rows.append({"platform": m.platform, "experiment": m.experiment, "arm": m.arm,
                     "status": m.status, "reason": m.reason or "",
                     "accelerator": acc.get("name"), "driver": acc.get("driver"),
                     "vllm": v.get("vllm"), "lmcache": v.get("lmcache"), "torch": v.get("torch"),
                     # loaded | fallback | unknown | not recorded | no LMCache (kvreuse.kernels)
                     "lmcache_kernels": kernels.status(m),
                     "model": model.get("name"), "weights": model.get("weights"),
                     "n_requests": m.n_requests, "n_errors": m.n_errors,
                     "server_starts": len(starts),
                     # warm-up phases: one after each server start keeps the first-request
                     # overhead out of every measured request
                     "warmup_phases": sum(1 for ph in m.phases.values() if ph.kind == "warmup"),
                     "first_start_s": starts[0] if starts else np.nan,
                     "later_start_s": float(np.median(starts[1:])) if len(starts) > 1 else np.nan,
                     "lmcache_server_gpu_mib_before_stop": mib_before,
                     "lmcache_server_gpu_mib_after_stop": mib_after,
                     **_taken(m),
                     "config_hash": m.config_hash, "git_commit": m.git_commit})
        if fresh is not None:
            rows[-1].update(freshness=fresh[i].freshness,
                            expected_config_hash=fresh[i].expected_config_hash,
                            archived_note=fresh[i].archived_note)
    return pd.DataFrame(rows)


def _taken(m: RunMeta) -> dict:
    """The server runs the run's job took from kept ones, and the other commits and GPUs that
    made them (their starts' ``resumed_commit``, ``resumed_gpu``)."""
    taken = [s for s in m.server_starts if s.get("process") == "vllm" and s.get("resumed_from")]
    commits = sorted({str(s["resumed_commit"]).split()[0] for s in taken if s.get("resumed_commit")})
    gpus = sorted({u for s in taken for u in ((s.get("resumed_gpu") or {}).get("uuids") or [])})
    return {"server_runs_taken": len({s.get("server_run") for s in taken}),
            "taken_commits": ", ".join(commits), "taken_gpus": ", ".join(gpus)}


def _busy_s(m: RunMeta) -> float:
    """Seconds a run kept its servers busy in its job's last start: their starts and its phases,
    less the server runs taken from an earlier start (they are counted by :func:`resumed_spans`)."""
    taken = {s.get("server_run") for s in m.server_starts if s.get("resumed_from")}
    return (sum(s.get("startup_s", 0.0) for s in m.server_starts if not s.get("resumed_from"))
            + sum(p.wall_s for p in m.phases.values() if not (taken and p.server_run in taken)))


def _wall_s(m: RunMeta, metas: list[RunMeta], benchmarks: dict[tuple, float]) -> float:
    """The run's own job's wall time; for the arms of one alternating job (its benchmark file
    results/benchmarks/<platform>/<experiment>/alternating.tsv), the job's wall time shared
    among the arms that ran in proportion to their busy seconds."""
    own = benchmarks.get((m.platform, m.experiment, m.arm))
    if own is not None:
        return own
    job = benchmarks.get((m.platform, m.experiment, alternating.JOB))
    if job is None:
        return np.nan
    busy = [_busy_s(o) for o in metas
            if (o.platform, o.experiment, o.status) == (m.platform, m.experiment, "ok")]
    share = job * _busy_s(m) / sum(busy) if sum(busy) > 0 else job / max(len(busy), 1)
    # the job's benchmark file times its last start only: the server runs it took from earlier
    # starts (kvreuse.experiments.server_runs) add their own spans
    return share + sum(end - start for start, end in resumed_spans(m))


def resumed_spans(m: RunMeta) -> list[tuple[float, float]]:
    """(from, to) epoch seconds of each server run this run took from an earlier start of its
    job: from its first server's start (``at`` less ``startup_s``) to when it was kept
    (``resumed_from``). A lower bound of what that start cost: its waits before the server
    run and any run the budget cut off are not in it."""
    runs: dict[int, list[float]] = {}
    for s in m.server_starts:
        if s.get("resumed_from") and s.get("at"):
            begin = interference.epoch(s["at"]) - float(s.get("startup_s") or 0.0)
            end = interference.epoch(s["resumed_from"])
            span = runs.setdefault(int(s.get("server_run") or 0), [begin, end])
            span[0], span[1] = min(span[0], begin), max(span[1], end)
    return [(b, e) for b, e in runs.values() if e > b]


def cost_table(metas: list[RunMeta], benchmarks: dict[tuple, float],
               targets: dict[str, dict] | None = None) -> pd.DataFrame:
    """GPU-minutes (Snakemake benchmark wall time x GPUs) and server starts per run, and per
    platform a TOTAL row. Where the platform has a ``cost_target`` (config.yaml: GPU-minutes for
    some of its experiments), its TOTAL row also gives the target (``target_gpu_minutes``) and
    what those experiments' runs held (``target_gpu_minutes_held``, each GPU counted once), their
    server starts and the seconds the starts took (``target_server_starts``,
    ``target_startup_s_total``), and which experiments it names (``target_experiments``)."""
    rows = []
    for m in metas:
        if m.status != "ok":
            continue
        starts = _vllm_starts(m)
        wall = _wall_s(m, metas, benchmarks)
        acc = m.accelerator or {}
        gpus = acc.get("count", 1) if acc.get("kind") == "gpu" else 0
        rows.append({"platform": m.platform, "experiment": m.experiment, "arm": m.arm,
                     "wall_s": wall, "gpu_minutes": wall * gpus / 60 if gpus else 0.0,
                     "server_starts": len(starts), "startup_s_total": sum(starts),
                     "first_start_s": starts[0] if starts else np.nan,
                     "later_start_s": float(np.median(starts[1:])) if len(starts) > 1 else np.nan,
                     "requests": m.n_requests})
    t = pd.DataFrame(rows)
    if len(t):
        tot = t.groupby("platform", sort=False)[["wall_s", "gpu_minutes", "server_starts", "startup_s_total", "requests"]].sum().reset_index()
        tot["experiment"], tot["arm"] = "TOTAL", ""
        ok = {p: [m for m in metas if m.platform == p and m.status == "ok"] for p in tot["platform"]}
        # jobs that shared a GPU (kvreuse.gpu_share) held it once: the union of their intervals
        tot["gpu_minutes_held"] = [_held_minutes(ok[p], benchmarks) for p in tot["platform"]]
        tot = tot.assign(**{c: np.nan for c in TARGET_COLUMNS}).astype({"target_experiments": object})
        for i, p in tot["platform"].items():
            if (target := (targets or {}).get(p)):
                got = _target(t[t.platform == p], target, benchmarks, ok[p])
                tot.loc[i, list(got)] = list(got.values())
        t = pd.concat([t, tot], ignore_index=True)
    return t


#: the TOTAL row's columns for a platform's ``cost_target``
TARGET_COLUMNS = ["target_gpu_minutes", "target_gpu_minutes_held", "target_server_starts", "target_startup_s_total",
                  "target_experiments"]


def _target(runs: pd.DataFrame, target: dict, benchmarks: dict[tuple, float], metas: list[RunMeta]) -> dict:
    """A platform's ``cost_target`` beside what the runs of its experiments held and started
    (the :data:`TARGET_COLUMNS`)."""
    named = set(target["experiments"])
    mine = runs[runs.experiment.isin(named)]
    return {"target_gpu_minutes": float(target["gpu_minutes"]),
            "target_gpu_minutes_held": _held_minutes([m for m in metas if m.experiment in named], benchmarks),
            "target_server_starts": float(mine.server_starts.sum()),
            "target_startup_s_total": float(mine.startup_s_total.sum()),
            "target_experiments": ", ".join(target["experiments"])}


def _held_minutes(metas: list[RunMeta], benchmarks: dict[tuple, float]) -> float:
    """GPU-minutes the runs' jobs held their GPUs (kvreuse.interference.held_gpu_minutes): a job
    spans its wall time up to its meta's finished_at; one without either counts in full; server
    runs taken from an earlier start of the job (:func:`resumed_spans`) span their own times."""
    spans, seen = [], set()
    for m in metas:
        acc = m.accelerator or {}
        gpus = acc.get("count", 1) if acc.get("kind") == "gpu" else 0
        wall = benchmarks.get((m.platform, m.experiment, m.arm),
                              benchmarks.get((m.platform, m.experiment, alternating.JOB)))
        job = (m.platform, m.experiment) + (() if alternating.alternates(m.experiment) else (m.arm,))
        key = interference.gpu_key(m)
        if gpus:  # server runs taken from an earlier start of the job held the GPU then
            spans += [(key, b, e, gpus) for b, e in resumed_spans(m)]
        if not gpus or wall is None or np.isnan(wall) or job in seen:  # an alternating job: once
            continue
        seen.add(job)
        if key is None or not m.finished_at:
            spans.append((None, 0.0, wall, gpus))
        else:
            end = interference.epoch(m.finished_at)
            spans.append((key, end - wall, end, gpus))
    return interference.held_gpu_minutes(spans)


def read_benchmarks(files: list[str]) -> dict[tuple, float]:
    """results/benchmarks/<platform>/<experiment>/<arm>.tsv -> wall seconds."""
    out = {}
    for f in files:
        p = Path(f)
        out[(p.parent.parent.name, p.parent.name, p.stem)] = float(pd.read_csv(f, sep="\t")["s"].iloc[0])
    return out
