"""The random-prompt overhead table (``random_overhead_table``): each arm against the APC-only
arm on the same prompts, across alternating server runs (the CI: kvreuse.alternating), with
what its store moved (kvreuse.phase_stats.transfers) and its LMCache kernels (kvreuse.kernels)."""

from __future__ import annotations

import pandas as pd

from . import alternating, kernels
from .phase_stats import transfers
from .results import RunMeta


def random_overhead_table(df: pd.DataFrame, metas: list[RunMeta], reference: str = "apc") -> pd.DataFrame:
    """Per platform and arm: mean and median TTFT and e2e over the unique prompts, the number
    of separate server runs (``server_runs``), the store's cost per request (:func:`store_cost`),
    and the change of the mean against the APC-only
    arm on the very same prompts, with a 95% CI that resamples server runs within each arm and
    then prompts, paired (kvreuse.alternating.ratio_ci): NaN with fewer than two server runs
    on either side (runs made before the alternating design had one). Arms whose store
    reported transfers also get the KV bytes their measured requests stored and loaded and
    the time it took, summed over the server runs, by the store's own account
    (``stored_bytes``, ``store_ms``, ``loaded_bytes``, ``load_ms``, ``transfer_source``)."""
    df = df[(df["phase_kind"] == "repeat") & df["error"].isna()]
    rows = []
    for m in metas:
        p, arm = m.platform, m.arm
        row = kernels.run_columns(m)
        sub = df[(df.platform == p) & (df.arm == arm)]
        if len(sub):
            row.update(n=len(sub), server_runs=sub["server_run"].fillna(0).nunique(),
                       ttft_mean_ms=sub.ttft_ms.mean(), e2e_mean_ms=sub.e2e_ms.mean(),
                       ttft_median_ms=sub.ttft_ms.median(), e2e_median_ms=sub.e2e_ms.median())
            ref = df[(df.platform == p) & (df.arm == reference)]
            if arm != reference and len(ref):
                for metric in ("e2e_ms", "ttft_ms"):
                    key = metric.replace("_ms", "")
                    point, lo, hi = alternating.ratio_ci(alternating.run_matrix(sub, metric),
                                                         alternating.run_matrix(ref, metric))
                    row[f"{key}_delta_pct"] = point
                    row[f"{key}_delta_ci95_lo_pct"] = lo
                    row[f"{key}_delta_ci95_hi_pct"] = hi
        measured = m.phases_of("repeat")
        for direction, key in (("store", "stored"), ("load", "loaded")):
            nbytes, secs, source = transfers(measured, direction)
            if nbytes > 0:
                row[f"{key}_bytes"], row[f"{direction}_ms"] = nbytes, secs * 1000
                row["transfer_source"] = "; ".join(filter(None, [row.get("transfer_source"), source]))
        row.update(store_cost(m))
        row.update(store_shape(m, sub))
        rows.append(row)
    return pd.DataFrame(rows)


def store_shape(m: RunMeta, measured: pd.DataFrame) -> dict:
    """What decides whether the store has anything to store: the measured prompts' mean length
    (``prompt_tokens_mean``), LMCache's chunk (``chunk_tokens``: with ``save_unfull_chunk`` off
    it stores no prompt shorter than one) and the KV bytes per token its meta recorded."""
    store = m.lmcache or m.offload or {}
    nan = float("nan")
    return {"prompt_tokens_mean": measured["prompt_tokens"].mean() if len(measured) else nan,
            "chunk_tokens": (m.lmcache or {}).get("chunk_size", nan),
            "kv_bytes_per_token": store.get("kv_bytes_per_token", nan)}


def store_cost(m: RunMeta) -> dict:
    """What storing each unique prompt's KV cost on the cold path (the source study's
    explanation of its L40S slowdown), per measured request: LMCache's own store log lines
    (``lmcache_log``: ms and bytes per store), or vLLM offloading's counters
    (``vllm:kv_offload_store_time`` in s, ``_store_bytes``), and their rate (``store_gb_s``, NaN
    where it stored nothing); none for an arm that stores nothing."""
    phases = [ph for ph in m.phases.values() if ph.kind == "repeat"]
    n = sum(ph.n_requests for ph in phases)
    logs = [ph.lmcache_log for ph in phases if ph.lmcache_log]
    offload = [ph.counters for ph in phases if "vllm:kv_offload_store_bytes" in ph.counters]
    if not n or not (logs or offload):
        return {"store_source": "", "store_ms_per_request": float("nan"), "store_mb_per_request": float("nan"),
                "store_gb_s": float("nan")}
    if logs:
        ms, nbytes, source = sum(x["store_ms"] for x in logs), sum(x["store_bytes"] for x in logs), "lmcache_log"
    else:
        ms = 1000 * sum(c.get("vllm:kv_offload_store_time", 0.0) for c in offload)
        nbytes, source = sum(c["vllm:kv_offload_store_bytes"] for c in offload), "vllm:kv_offload_store_*"
    return {"store_source": source, "store_ms_per_request": ms / n, "store_mb_per_request": nbytes / n / 1e6,
            "store_gb_s": nbytes / 1e6 / ms if nbytes > 0 and ms > 0 else float("nan")}  # MB/ms = GB/s
