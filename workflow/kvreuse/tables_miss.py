"""The cache-miss overhead table (``miss_table``): per platform, arm, prompt length and case
(``miss``: nothing reusable; ``vram_hit``: every prompt already in the GPU's prefix cache), the
mean TTFT and end-to-end time, and each arm's change against APC alone on the very same prompts,
with a 95% CI that resamples server runs within each arm and then prompts, paired by ``seq``
(kvreuse.alternating.ratio_ci); the hits of each case by the counters."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import alternating, kernels
from .phase_stats import transfers
from .results import RunMeta

#: the measured cases of the miss experiment (its phase kinds)
CASES = ("miss", "vram_hit")
#: the arm every other arm is compared with (APC alone)
REFERENCE = "apc"
#: the columns of a table without runs (no platform ran the experiment), so that it reads back
EMPTY_COLUMNS = ["platform", "arm", "arm_label", "status", "reason", "lmcache_kernels", "prompt_tokens", "case", "n",
                 "server_runs", "ttft_mean_ms", "e2e_mean_ms", "ttft_delta_pct", "ttft_delta_ci95_lo_pct",
                 "ttft_delta_ci95_hi_pct", "e2e_delta_pct", "e2e_delta_ci95_lo_pct", "e2e_delta_ci95_hi_pct",
                 "hit_fraction"]


def miss_table(df: pd.DataFrame, metas: list[RunMeta], reference: str = REFERENCE) -> pd.DataFrame:
    """One row per platform, arm, length and case (an arm that did not run: one row with why)."""
    ok = df[df["phase_kind"].isin(CASES) & df["error"].isna()] if len(df) else df
    rows = []
    for m in metas:
        base = kernels.run_columns(m)
        if m.status != "ok":
            rows.append(base)
            continue
        lengths = sorted({ph.prefix_tokens for ph in m.phases.values() if ph.kind in CASES})
        for n in lengths:
            for case in CASES:
                phases = [ph for ph in m.phases_of(case) if ph.prefix_tokens == n]
                mine = ok[(ok.platform == m.platform) & (ok.arm == m.arm) & (ok.phase_kind == case)
                          & (ok.prefix_tokens == n)]
                ref = ok[(ok.platform == m.platform) & (ok.arm == reference) & (ok.phase_kind == case)
                         & (ok.prefix_tokens == n)]
                rows.append({**base, "prompt_tokens": n, "case": case,
                             **_case_row(mine, ref, phases, m.arm != reference)})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=EMPTY_COLUMNS)


def _case_row(mine: pd.DataFrame, ref: pd.DataFrame, phases: list, compare: bool) -> dict:
    row = {"n": len(mine), "server_runs": mine["server_run"].fillna(0).nunique() if len(mine) else 0,
           "ttft_mean_ms": mine["ttft_ms"].astype(float).mean(), "e2e_mean_ms": mine["e2e_ms"].astype(float).mean(),
           "ttft_median_ms": mine["ttft_ms"].astype(float).median()}
    if compare and len(mine) and len(ref):
        for metric in ("ttft_ms", "e2e_ms"):
            key = metric.replace("_ms", "")
            point, lo, hi = alternating.ratio_ci(alternating.run_matrix(mine, metric),
                                                 alternating.run_matrix(ref, metric))
            row[f"{key}_delta_pct"], row[f"{key}_delta_ci95_lo_pct"], row[f"{key}_delta_ci95_hi_pct"] = point, lo, hi
    c = {k: sum((ph.counters or {}).get(k, 0.0) for ph in phases)
         for k in ("vllm:prompt_tokens", "vllm:prefix_cache_hits", "vllm:external_prefix_cache_hits")}
    prompt = c["vllm:prompt_tokens"]
    row.update(counted_prompt_tokens=prompt, apc_hit_tokens=c["vllm:prefix_cache_hits"],
               store_hit_tokens=c["vllm:external_prefix_cache_hits"],
               hit_fraction=(c["vllm:prefix_cache_hits"] + c["vllm:external_prefix_cache_hits"]) / prompt
               if prompt else np.nan)
    for direction, key in (("store", "stored"), ("load", "loaded")):
        nbytes, secs, source = transfers(phases, direction)
        row[f"{key}_bytes"] = nbytes
        row[f"{direction}_ms"] = secs * 1000
        if source:
            row["transfer_source"] = "; ".join(filter(None, [row.get("transfer_source"), source]))
    return row
