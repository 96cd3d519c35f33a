"""What sharing a GPU cost the measurements, and how long each GPU was held.

Jobs that share a GPU node (kvreuse.gpu_share) never measure at once, but one job's server may
be starting (importing, loading weights, one profiling forward pass) while another measures.
:func:`interference_table` finds the measured requests that overlapped another run's server
start on the same GPU (the GPU's UUID and host in each meta's ``accelerator``; a start spans
``at - startup_s`` to ``at``) and compares their TTFT with the requests of the same condition
that overlapped none: the cost of the overlap, measured, not assumed.

:func:`held_gpu_minutes` is the time each GPU was held by the runs: the union of their jobs'
intervals per GPU (jobs that share a GPU are not counted twice), the GPU-minutes a lent node
or an allocation is paid for.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from .results import RunMeta
from .stats import median_difference

#: the conditions a request's TTFT is compared within (its run and phase)
CONDITION = ["platform", "experiment", "arm", "phase_kind", "prefix_tokens"]
COLUMNS = CONDITION + ["n_overlap", "n_clear", "ttft_overlap_median_ms", "ttft_clear_median_ms",
                       "diff_median_ms", "diff_ci95_lo_ms", "diff_ci95_hi_ms"]


def gpu_key(meta: RunMeta) -> tuple | None:
    """The GPU(s) a run held, where its meta says (host and UUIDs); None for older runs."""
    acc = meta.accelerator or {}
    if acc.get("kind") != "gpu" or not acc.get("uuids"):
        return None
    return (acc.get("host"), tuple(acc["uuids"]))


def epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def start_intervals(metas: list[RunMeta]) -> pd.DataFrame:
    """Every server start of the runs: which run, which GPU, from when to when (epoch s)."""
    rows = []
    for m in metas:
        key = gpu_key(m)
        for s in m.server_starts if key is not None else []:
            end = epoch(s["at"])
            rows.append({"gpu": key, "platform": m.platform, "experiment": m.experiment, "arm": m.arm,
                         "begin": end - float(s["startup_s"]), "end": end})
    return pd.DataFrame(rows, columns=["gpu", "platform", "experiment", "arm", "begin", "end"])


def overlaps(records: pd.DataFrame, metas: list[RunMeta]) -> pd.Series:
    """Per record: whether it was in flight while another run's server started on its GPU."""
    starts = start_intervals(metas)
    gpus = {(m.platform, m.experiment, m.arm): gpu_key(m) for m in metas}
    out = pd.Series(False, index=records.index)
    if starts.empty or records.empty:
        return out
    for idx, r in records.iterrows():
        gpu = gpus.get((r.platform, r.experiment, r.arm))
        if gpu is None or pd.isna(r.t_start) or pd.isna(r.e2e_ms):
            continue
        b, e = float(r.t_start), float(r.t_start) + float(r.e2e_ms) / 1000
        other = starts[(starts.gpu == gpu) & ~((starts.platform == r.platform)
                                                & (starts.experiment == r.experiment) & (starts.arm == r.arm))]
        out[idx] = bool(((other.begin < e) & (other.end > b)).any())
    return out


def interference_table(records: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """Per condition with requests that overlapped another run's start: TTFT of those against
    the others of the same condition (median difference overlap - clear, bootstrap CI)."""
    ok = [m for m in metas if m.status == "ok" and gpu_key(m) is not None]
    keys = {(m.platform, m.experiment, m.arm) for m in ok}
    if records.empty or not keys:
        return pd.DataFrame(columns=COLUMNS)
    df = records[[k in keys for k in zip(records.platform, records.experiment, records.arm)]]
    df = df[df.error.isna() & df.ttft_ms.notna() & (df.phase_kind != "warmup")]
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)
    df = df.assign(overlap=overlaps(df, ok), prefix_tokens=df.prefix_tokens.fillna(-1))
    rows = []
    for cond, g in df.groupby(CONDITION, sort=True):
        hit, clear = g[g.overlap].ttft_ms, g[~g.overlap].ttft_ms
        if hit.empty:
            continue
        d = median_difference(hit, clear)
        rows.append(dict(zip(CONDITION, cond)) | {
            "n_overlap": len(hit), "n_clear": len(clear),
            "ttft_overlap_median_ms": d.baseline_median_ms, "ttft_clear_median_ms": d.treatment_median_ms,
            "diff_median_ms": d.diff_median_ms, "diff_ci95_lo_ms": d.diff_ci95_lo_ms,
            "diff_ci95_hi_ms": d.diff_ci95_hi_ms})
    t = pd.DataFrame(rows, columns=COLUMNS)
    t["prefix_tokens"] = t["prefix_tokens"].replace(-1, np.nan)
    return t


def held_gpu_minutes(intervals: list[tuple[tuple | None, float, float, float]]) -> float:
    """GPU-minutes held by jobs given as (gpu key, begin, end, gpus): per GPU the union of its
    jobs' intervals; a job without a key counts alone, in full."""
    total, by_gpu = 0.0, {}
    for key, begin, end, gpus in intervals:
        if key is None:
            total += (end - begin) * gpus
        else:
            by_gpu.setdefault(key, []).append((begin, end, gpus))
    for spans in by_gpu.values():
        spans.sort()
        cur_b, cur_e, gpus = spans[0]
        for b, e, _ in spans[1:]:
            if b > cur_e:
                total += (cur_e - cur_b) * gpus
                cur_b, cur_e = b, e
            else:
                cur_e = max(cur_e, e)
        total += (cur_e - cur_b) * gpus
    return total / 60
