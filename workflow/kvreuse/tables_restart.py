"""The restart table (``restart_table``: per run, latency per phase kind at one prefix length
beside the persistence verdict over all lengths, kvreuse.verdict) and what the restart tables
share with the reload tables (kvreuse.tables_reload): a run's records and phases by prefix
length (the bytes and time of the loads after the restart: kvreuse.phase_stats.transfers,
from whichever counters the store has)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from . import kernels, verdict
from .phase_stats import kv_bytes_per_token, lmcache_chunk_bytes, phase_table, tensor_parallel, transfers
from .results import Phase, RunMeta


#: the restart table's kinds, in its column order
RESTART_KINDS = ("populate", "warm", "post_restart_first", "post_restart_steady", "post_restart_cold",
                 "cold_reference")


#: vLLM offloading's wait for its secondary (file) tier's asynchronous lookups, seconds (sum)
OFFLOAD_LOOKUP_WAIT = "vllm:kv_offload_lookup_async_delay_seconds_sum"


def connector_kind(m: RunMeta) -> str:
    """Which KV connector the arm loads through: ``lmcache``, ``vllm_offload`` or ``none`` (APC)."""
    arm = m.arm_config or {}
    if arm.get("lmcache") is not None:
        return "lmcache"
    return "vllm_offload" if arm.get("offload") is not None else "none"


def run_records(df: pd.DataFrame, m: RunMeta) -> pd.DataFrame:
    """The run's records, each with its prefix length (``prefix_tokens``; runs made before
    phases carried it: the run's ``prefix_tokens`` parameter)."""
    if df.empty:
        return df
    run = df[(df.platform == m.platform) & (df.arm == m.arm)]
    if "experiment" in run:
        run = run[run.experiment == m.experiment]
    given = (m.params or {}).get("prefix_tokens")
    lengths = run["prefix_tokens"].astype(float) if "prefix_tokens" in run else pd.Series(np.nan, index=run.index)
    return run.assign(prefix_tokens=lengths.fillna(np.nan if given is None else float(given)))


def phase_length(m: RunMeta, ph: Phase) -> int | None:
    """A phase's prefix length (the run's ``prefix_tokens`` for phases made before the field)."""
    if ph.prefix_tokens is not None:
        return int(ph.prefix_tokens)
    given = (m.params or {}).get("prefix_tokens")
    return None if given is None or ph.kind == "warmup" else int(given)


def lengths_of(m: RunMeta, kind: str = "post_restart_first") -> list[int]:
    """The prefix lengths at which the run has phases of ``kind``, shortest first."""
    return sorted({n for ph in m.phases.values() if ph.kind == kind and (n := phase_length(m, ph)) is not None})


def reference_length(m: RunMeta) -> int | None:
    """The length restart.csv's latency columns are at: the run's ``prefix_tokens`` where it
    populated that length, else its shortest populated length (None: no phases)."""
    lengths = lengths_of(m, "populate")
    given = (m.params or {}).get("prefix_tokens")
    if given is not None and int(given) in lengths:
        return int(given)
    return lengths[0] if lengths else None


def at_length(m: RunMeta, length: int | None) -> RunMeta:
    """The run with only its phases at ``length`` (and the warm-ups); all of them for None."""
    if length is None:
        return m
    return dataclasses.replace(m, phases={name: ph for name, ph in m.phases.items()
                                          if ph.kind == "warmup" or phase_length(m, ph) == length})


def restart_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """One row per platform and arm: per phase kind, at the run's reference length
    (``latency_prefix_tokens``, :func:`reference_length`; a run over several lengths has its
    per-length rows in reload_vs_recompute.csv), the median over its requests with its CI and
    summed hit tokens, and n; the verdict (kvreuse.verdict) over every populated prefix of
    every length, from each one's first request after the restart; the loads after the restart
    at the reference length (median per request, and GB/s of their sums)."""
    rows = []
    for m in metas:
        state = kernels.status(m)
        row = {"platform": m.platform, "arm": m.arm, "arm_label": kernels.arm_label(m.arm, state),
               "connector": connector_kind(m), "status": m.status, "reason": m.reason or "",
               "lmcache_kernels": state, "model": (m.model or {}).get("name"),
               "tensor_parallel": tensor_parallel(m),
               "kv_bytes_per_token": kv_bytes_per_token(m)}  # the model's, over all its GPUs
        ref = reference_length(m)
        records = run_records(df, m)
        here = records[records.prefix_tokens == ref] if ref is not None and len(records) else records
        mm = at_length(m, ref)
        long = phase_table(here, [mm], ["platform", "arm", "phase"]) if len(here) else pd.DataFrame()
        by_kind = {r["phase"]: r for _, r in long.iterrows()}
        for kind in [k for k in RESTART_KINDS if k in by_kind]:
            r = by_kind[kind]
            row[f"{kind}_ttft_median_ms"] = r["ttft_median_ms"]
            row[f"{kind}_e2e_median_ms"] = r["e2e_median_ms"]
            row[f"{kind}_ttft_ci95_lo_ms"] = r["ttft_ci95_lo_ms"]
            row[f"{kind}_ttft_ci95_hi_ms"] = r["ttft_ci95_hi_ms"]
            row[f"{kind}_hit_tokens"] = r["hit_tokens"]
        if m.status == "ok":
            judged = verdict.run_verdict(verdict.prefix_verdicts(m, records))
            row["persisted"] = judged.get("verdict") == verdict.PERSISTED
            row["output_equal"] = bool(judged.get("output_equal"))
            row["persisted_hit_tokens"] = judged.pop("persisted_hit_tokens", np.nan)
            if m.output_equal_cold_reference is not None:
                row["output_equal_cold_reference"] = bool(m.output_equal_cold_reference)
            if m.store_after_stop:
                row["store_files"] = m.store_after_stop.get("files")
                row["store_bytes"] = m.store_after_stop.get("bytes")
            firsts = mm.phases_of("post_restart_first")
            loads = [(ph, transfers([ph], "load", lmcache_chunk_bytes(m))) for ph in firsts]
            loads = [(ph, x) for ph, x in loads if x[0] > 0]  # NaN: nothing moved
            if loads:  # the store's own account of the reloads after the restart, per request
                row["reload_bytes"] = float(np.median([x[0] for _, x in loads]))
                row["reload_ms"] = float(np.median([1000 * x[1] for _, x in loads]))
                nbytes, secs = sum(x[0] for _, x in loads), sum(x[1] for _, x in loads)
                row["reload_gb_s"] = nbytes / secs / 1e9 if secs > 0 else np.nan
                hit = sum(verdict.hits(m, ph.counters) for ph, _ in loads)
                row["reload_bytes_per_hit_token"] = nbytes / hit if hit else np.nan
                row["load_source"] = loads[0][1][2]
            # vLLM's offloading: the wait for its secondary tiers' lookups before a load (s, summed)
            wait = [ph.counters.get(OFFLOAD_LOOKUP_WAIT, 0.0) for ph in firsts]
            if sum(wait) > 0:
                row["reload_lookup_wait_ms"] = 1000 * float(np.median(wait))
            row.update({k: v for k, v in judged.items() if k != "output_equal"})
            for kind in [k for k in RESTART_KINDS if k in by_kind]:
                row[f"{kind}_n"] = by_kind[kind]["n"]
            row["latency_prefix_tokens"] = ref
            row["n_lengths"] = len(lengths_of(m))
        rows.append(row)
    return pd.DataFrame(rows)
