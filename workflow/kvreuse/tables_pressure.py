"""The KV-pressure table (``pressure_table``): per arm and workload (source study 001's
``prefix_repetition`` on a shrunk KV cache, and the conversation-shaped realism run), vllm
bench serve's own summary, our CI, each arm against APC alone, and the hits by the counters.

Eviction is proven by counters, never by time: in the prefix_repetition run every prompt after
the first on its prefix could reuse that prefix, so a prefix cache that never evicts would serve
``(num_prompts - num_prefixes)`` times the prefix's whole blocks (less the block that holds its
last token, where the suffix may re-tokenize across the join) as ``vllm:prefix_cache_hits``;
``apc_hit_fraction`` is the hits vLLM reported over that, and the run is ``evicting`` below
``evicting_below``. ``vllm:prefix_cache_queries`` is the prompt tokens looked up. What an
offloading store served is ``vllm:external_prefix_cache_hits`` (LMCache's connector, vLLM's
OffloadingConnector), with the bytes it loaded where its counters say (kvreuse.phase_stats).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import kernels, schema
from .phase_stats import transfers
from .results import RunMeta
from .stats import _CI_Q, CI_RESAMPLES, P99_MIN_N, bootstrap_ci, median_difference

#: the arm every other arm is compared with (APC alone)
REFERENCE = "apc"

#: the workloads of the pressure experiment: its phase kinds, in the order they run
WORKLOADS = ("prefix_repetition", "conversation")
#: vllm bench serve's summary keys -> the table's columns
BENCH_COLUMNS = {"mean_ttft_ms": "ttft_mean_ms", "median_ttft_ms": "ttft_median_ms", "p99_ttft_ms": "ttft_p99_ms",
                 "mean_itl_ms": "itl_mean_ms", "median_itl_ms": "itl_median_ms", "p99_itl_ms": "itl_p99_ms",
                 "request_throughput": "request_throughput_req_s", "output_throughput": "output_throughput_tok_s",
                 "total_token_throughput": "total_throughput_tok_s", "completed": "completed"}


#: the columns of a table without runs (no platform ran the experiment), so that it reads back
EMPTY_COLUMNS = ["platform", "arm", "arm_label", "status", "reason", "lmcache_kernels", "workload",
                 *BENCH_COLUMNS.values(), "n", "apc_hit_tokens", "store_hit_tokens", "no_eviction_hit_tokens",
                 "apc_hit_fraction", "evicting_below", "evicting"]


def no_eviction_hits(params: dict, num_prompts: int) -> float:
    """The prefix-cache hit tokens a cache that never evicts would serve in the prefix_repetition
    run: every prompt after its prefix's first reuses the prefix's whole blocks but the last
    (``block_size`` null: counted in tokens)."""
    block = schema.get(params, "experiments", "pressure", "block_size") or 1
    per_prompt = (params["prefix_tokens"] - 1) // block * block
    return float(max(num_prompts - params["num_prefixes"], 0) * per_prompt)


def stat_difference(baseline, treatment, stat, seed: int = 0) -> tuple[float, float, float]:
    """``stat(baseline) - stat(treatment)`` and the percentile bootstrap 95% CI of that
    difference, each side resampled on its own (kvreuse.stats' resamples and level); NaN CI
    with fewer than two values on a side."""
    a, b = (np.asarray(x, dtype=float) for x in (baseline, treatment))
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return np.nan, np.nan, np.nan
    point = float(stat(a) - stat(b))
    if len(a) < 2 or len(b) < 2:
        return point, np.nan, np.nan
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(CI_RESAMPLES, len(a)))
    ib = rng.integers(0, len(b), size=(CI_RESAMPLES, len(b)))
    lo, hi = np.percentile(stat(a[ia], axis=1) - stat(b[ib], axis=1), _CI_Q)
    return point, float(lo), float(hi)


def _p99(x, axis=None):
    return np.percentile(x, 99, axis=axis)


def _request_itl_mean(itls) -> float:
    return float(np.mean(itls)) if itls is not None and len(itls) else np.nan


def pressure_table(df: pd.DataFrame, metas: list[RunMeta], reference: str = REFERENCE) -> pd.DataFrame:
    """One row per platform, arm and workload (an arm that did not run: one row with why)."""
    ok = df[df["phase_kind"].isin(WORKLOADS) & df["error"].isna()] if len(df) else df
    summaries = {(m.platform, m.arm, ph.kind): ph.bench_summary or {}
                 for m in metas for ph in m.phases.values() if ph.kind in WORKLOADS}
    rows = []
    for m in metas:
        base = kernels.run_columns(m)
        if m.status != "ok":
            rows.append(base)
            continue
        for kind in WORKLOADS:
            phases = m.phases_of(kind)
            if not phases:
                continue
            rows.append({**base, "workload": kind, **_workload_row(
                ok, m, kind, phases, reference, summaries.get((m.platform, reference, kind), {}))})
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=EMPTY_COLUMNS)


def _workload_row(ok: pd.DataFrame, m: RunMeta, kind: str, phases: list, reference: str,
                  ref_summary: dict) -> dict:
    """vllm bench serve's summary, our CI of the mean TTFT, the counters, and (an arm other than
    the reference) the median TTFT it saves and the ITL it adds against the reference, with
    bootstrap CIs (kvreuse.stats), and its change of throughput (one run a side: no CI)."""
    summary = phases[0].bench_summary or {}
    row = {col: summary.get(key, np.nan) for key, col in BENCH_COLUMNS.items()}
    mine = ok[(ok.platform == m.platform) & (ok.arm == m.arm) & (ok.phase_kind == kind)]
    ttft = mine["ttft_ms"].astype(float)
    row["n"] = len(mine)
    row["ttft_mean_ci95_lo_ms"], row["ttft_mean_ci95_hi_ms"] = bootstrap_ci(ttft, stat=np.mean)
    c = {k: sum((ph.counters or {}).get(k, 0.0) for ph in phases)
         for k in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:external_prefix_cache_queries",
                   "vllm:external_prefix_cache_hits", "vllm:num_preemptions")}
    row.update(prefix_cache_queries=c["vllm:prefix_cache_queries"], apc_hit_tokens=c["vllm:prefix_cache_hits"],
               store_queries=c["vllm:external_prefix_cache_queries"],
               store_hit_tokens=c["vllm:external_prefix_cache_hits"], preemptions=c["vllm:num_preemptions"])
    nbytes, secs, source = transfers(phases, "load")
    row.update(store_loaded_bytes=nbytes, store_load_ms=secs * 1000, store_load_source=source)
    if kind == "prefix_repetition":
        ideal = no_eviction_hits(m.params, int(summary.get("completed", len(mine)) or 0))
        row["no_eviction_hit_tokens"] = ideal
        row["apc_hit_fraction"] = c["vllm:prefix_cache_hits"] / ideal if ideal else np.nan
        row["reuse_hit_fraction"] = ((c["vllm:prefix_cache_hits"] + c["vllm:external_prefix_cache_hits"]) / ideal
                                     if ideal else np.nan)
        below = schema.get(m.params, "experiments", "pressure", "evicting_below")
        row["evicting_below"] = below
        row["evicting"] = bool(row["apc_hit_fraction"] < below) if ideal else None
    ref = ok[(ok.platform == m.platform) & (ok.arm == reference) & (ok.phase_kind == kind)]
    if m.arm != reference and len(ref):
        d = median_difference(ref["ttft_ms"].astype(float), ttft)  # APC - arm: what the arm saves
        row.update(ttft_saved_median_ms=d.diff_median_ms, ttft_saved_ci95_lo_ms=d.diff_ci95_lo_ms,
                   ttft_saved_ci95_hi_ms=d.diff_ci95_hi_ms, ttft_speedup=d.speedup)
        # the same for the mean and (from P99_MIN_N requests a side, as stats.tail) the 99th percentile
        for name, stat in (("mean", np.mean), ("p99", _p99)):
            point, lo, hi = (stat_difference(ref["ttft_ms"].astype(float), ttft, stat)
                             if name == "mean" or min(len(ref), len(ttft)) >= P99_MIN_N else (np.nan,) * 3)
            row.update({f"ttft_saved_{name}_ms": point, f"ttft_saved_{name}_ci95_lo_ms": lo,
                        f"ttft_saved_{name}_ci95_hi_ms": hi})
        itl = median_difference(mine["itl_ms"].map(_request_itl_mean), ref["itl_ms"].map(_request_itl_mean))
        row.update(itl_added_median_ms=itl.diff_median_ms, itl_added_ci95_lo_ms=itl.diff_ci95_lo_ms,
                   itl_added_ci95_hi_ms=itl.diff_ci95_hi_ms)  # arm - APC: what the arm adds per token
        for key, col in (("request_throughput", "request_throughput_change_pct"),
                         ("output_throughput", "output_throughput_change_pct")):
            if ref_summary.get(key):
                row[col] = 100 * (summary.get(key, np.nan) / ref_summary[key] - 1)
    return row
