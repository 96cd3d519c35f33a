"""The restart tables: ``restart_table`` (per arm: latency per phase kind beside the
persistence verdict, kvreuse.verdict) and ``reload_vs_recompute_table`` (per arm with a KV
connector, LMCache or vLLM's own offloading, and prefix length: reloading after a restart
beside recomputing, and the analytic load time per link), with their helpers. Each row names
its arm as figures show it (``arm_label``: marked where LMCache's kernels did not load) beside
the kernel state (``lmcache_kernels``, kvreuse.kernels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import kernels, kvmodel, verdict
from .phase_stats import phase_table, transfers
from .results import Phase, RunMeta


#: vLLM's offloading: wall time from a request's first deferred lookup in a secondary tier
#: (the file tier) until it is scheduled, a histogram (its sum: seconds)
OFFLOAD_LOOKUP_WAIT = "vllm:kv_offload_lookup_async_delay_seconds_sum"

#: the restart table's kinds, in its column order
RESTART_KINDS = ("populate", "warm", "post_restart_first", "post_restart_steady", "post_restart_cold",
                 "cold_reference")


def connector_kind(m: RunMeta) -> str:
    """Which KV connector the arm loads through: ``lmcache``, ``vllm_offload`` or ``none`` (APC)."""
    arm = m.arm_config or {}
    if arm.get("lmcache") is not None:
        return "lmcache"
    return "vllm_offload" if arm.get("offload") is not None else "none"


def restart_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """One row per platform and arm: per phase kind, the median over its requests (all
    prefixes) with its CI and summed hit tokens; the verdict (kvreuse.verdict) from each
    populated prefix's first request after the restart; n per kind."""
    long = phase_table(df, metas, ["platform", "arm", "phase"])
    rows = []
    for m in metas:
        state = kernels.status(m)
        row = {"platform": m.platform, "arm": m.arm, "arm_label": kernels.arm_label(m.arm, state),
               "connector": connector_kind(m), "status": m.status, "reason": m.reason or "",
               "lmcache_kernels": state}
        sub = long[(long.platform == m.platform) & (long.arm == m.arm)] if len(long) else long
        by_kind = {r["phase"]: r for _, r in sub.iterrows()}
        for kind in [k for k in RESTART_KINDS if k in by_kind]:
            r = by_kind[kind]
            row[f"{kind}_ttft_median_ms"] = r["ttft_median_ms"]
            row[f"{kind}_e2e_median_ms"] = r["e2e_median_ms"]
            row[f"{kind}_ttft_ci95_lo_ms"] = r["ttft_ci95_lo_ms"]
            row[f"{kind}_ttft_ci95_hi_ms"] = r["ttft_ci95_hi_ms"]
            row[f"{kind}_hit_tokens"] = r["hit_tokens"]
        if m.status == "ok":
            records = df[(df.platform == m.platform) & (df.arm == m.arm)] if len(df) else df
            judged = verdict.run_verdict(verdict.prefix_verdicts(m, records))
            row["persisted"] = judged.get("verdict") == verdict.PERSISTED
            row["output_equal"] = bool(judged.get("output_equal"))
            row["persisted_hit_tokens"] = judged.pop("persisted_hit_tokens", np.nan)
            if m.output_equal_cold_reference is not None:
                row["output_equal_cold_reference"] = bool(m.output_equal_cold_reference)
            if m.store_after_stop:
                row["store_files"] = m.store_after_stop.get("files")
                row["store_bytes"] = m.store_after_stop.get("bytes")
            firsts = m.phases_of("post_restart_first")
            nbytes, secs, source = transfers(firsts, "load")  # the store's own account of the reloads
            if nbytes > 0:
                row["reload_bytes"], row["reload_ms"], row["reload_source"] = nbytes, secs * 1000, source
                row["reload_gb_s"] = nbytes / secs / 1e9 if secs > 0 else np.nan
            wait = sum(ph.counters.get(OFFLOAD_LOOKUP_WAIT, 0.0) for ph in firsts)
            if wait > 0:  # vLLM's offloading: waiting for its secondary tiers' lookups
                row["reload_lookup_wait_ms"] = 1000 * wait
            row.update({k: v for k, v in judged.items() if k != "output_equal"})
            for kind in [k for k in RESTART_KINDS if k in by_kind]:
                row[f"{kind}_n"] = by_kind[kind]["n"]
        rows.append(row)
    return pd.DataFrame(rows)


RELOAD_COLUMNS = ["platform", "arm", "arm_label", "status", "reason", "lmcache_kernels", "prefix_tokens",
                  "kv_bytes_per_token", "kv_bytes_model", "reload_ttft_ms", "reload_hit_tokens",
                  "loaded_bytes", "load_ms", "achieved_gb_s", "load_source", "recompute_ttft_ms",
                  "recompute_prefill_ms", "cold_ttft_ms", "apc_cold_ttft_ms", "link", "link_gb_s",
                  "model_load_ms"]


def _ttft_median(df: pd.DataFrame, platform: str, arm: str, kind: str, prefix_tokens: int) -> float:
    """The median TTFT of a kind's requests at one prefix length (all its samples)."""
    if df.empty:
        return np.nan
    s = df[(df.platform == platform) & (df.arm == arm) & (df.phase_kind == kind)
           & (df.prefix_tokens == prefix_tokens) & df.error.isna()]
    return float(s["ttft_ms"].astype(float).median()) if len(s) else np.nan


def _loaded(phases: list[Phase]) -> tuple[float, float, str]:
    """Bytes loaded and load seconds of phases (summed) and their source
    (kvreuse.phase_stats.transfers: LMCache's log, the LMCache server's DMA counters, or vLLM's
    kv_offload counters)."""
    return transfers(phases, "load")


def _kv_bytes_per_token(m: RunMeta) -> int | None:
    """From the run (LMCache and offload arms record it), else from the model spec's config.json."""
    bpt = (m.lmcache or m.offload or {}).get("kv_bytes_per_token")
    path = ((m.model or {}).get("spec") or {}).get("config_json")
    if bpt is None and path and Path(path).is_file():
        cfg = json.loads(Path(path).read_text())
        bpt = kvmodel.kv_bytes_per_token(cfg, cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    return bpt


def _by_length(m: RunMeta, kind: str) -> dict[int, list[Phase]]:
    """Prefix length -> the phases of ``kind`` at it (its samples), shortest length first."""
    out: dict[int, list[Phase]] = {}
    for ph in m.phases.values():
        if ph.kind == kind and ph.prefix_tokens is not None:
            out.setdefault(int(ph.prefix_tokens), []).append(ph)
    return dict(sorted(out.items()))


def _prefill_ms(phases: list[Phase]) -> float:
    """vLLM's own mean prefill time of the phases' requests (its histogram's sum / count)."""
    count = sum(ph.counters.get("vllm:request_prefill_time_seconds_count", 0.0) for ph in phases)
    total = sum(ph.counters.get("vllm:request_prefill_time_seconds_sum", 0.0) for ph in phases)
    return 1000 * total / count if count else np.nan


def reload_vs_recompute_table(df: pd.DataFrame, metas: list[RunMeta],
                              links_gb_s: dict | None = None) -> pd.DataFrame:
    """Per arm with a KV connector (LMCache or vLLM's offloading) and prefix length: the reloads after a restart (median TTFT over the
    length's samples; bytes, load time and hits summed over them; GB/s of the sums) beside
    recomputing, and the analytic load time bytes / link bandwidth per link.

    APC-only sweeps add rows with their measured cold prefill beside the analytic load time
    (arm = that arm, no reload), so the model is drawn wherever a platform has links."""
    links_gb_s = links_gb_s or {}
    apc = {}
    for m in metas:
        if m.status == "ok" and not verdict.connector(m):
            for n in _by_length(m, "cold"):
                apc.setdefault((m.platform, n), _ttft_median(df, m.platform, m.arm, "cold", n))
    rows = []
    for m in metas:
        if not verdict.connector(m):
            continue
        state = kernels.status(m)
        base = {"platform": m.platform, "arm": m.arm, "arm_label": kernels.arm_label(m.arm, state),
                "status": m.status, "reason": m.reason or "", "lmcache_kernels": state}
        reloads = _by_length(m, "reload")
        if m.status != "ok" or not reloads:
            rows.append(base)
            continue
        bpt = (m.lmcache or m.offload or {}).get("kv_bytes_per_token")
        recomputes = _by_length(m, "recompute")
        for n, phases in reloads.items():
            nbytes, secs, source = _loaded(phases)
            row = {**base, "prefix_tokens": n, "kv_bytes_per_token": bpt,
                   "kv_bytes_model": n * bpt if bpt else np.nan,
                   "reload_ttft_ms": _ttft_median(df, m.platform, m.arm, "reload", n),
                   "reload_hit_tokens": sum(ph.counters.get("vllm:external_prefix_cache_hits", 0.0)
                                            for ph in phases),
                   "loaded_bytes": nbytes, "load_ms": secs * 1000,
                   "achieved_gb_s": nbytes / secs / 1e9 if secs and secs > 0 else np.nan,
                   "load_source": source,
                   "recompute_ttft_ms": _ttft_median(df, m.platform, m.arm, "recompute", n),
                   "recompute_prefill_ms": _prefill_ms(recomputes.get(n, [])),
                   "cold_ttft_ms": _ttft_median(df, m.platform, m.arm, "cold", n),
                   "apc_cold_ttft_ms": apc.get((m.platform, n), np.nan)}
            links = links_gb_s.get(m.platform) or {}
            for link, gb_s in (links.items() if links else [(None, np.nan)]):
                rows.append({**row, "link": link, "link_gb_s": gb_s,
                             "model_load_ms": (1000 * kvmodel.load_time_s(n, bpt, gb_s)
                                               if bpt and link else np.nan)})
    for m in metas:  # APC-only sweeps: measured prefill beside the model, where links are known
        links = links_gb_s.get(m.platform) or {}
        if m.status != "ok" or verdict.connector(m) or not links:
            continue
        bpt = _kv_bytes_per_token(m)
        for n, phases in _by_length(m, "cold").items():
            row = {"platform": m.platform, "arm": m.arm, "arm_label": m.arm, "status": m.status,
                   "reason": "", "lmcache_kernels": kernels.NOT_APPLICABLE,
                   "prefix_tokens": n, "kv_bytes_per_token": bpt,
                   "kv_bytes_model": n * bpt if bpt else np.nan,
                   "recompute_prefill_ms": _prefill_ms(phases),
                   "cold_ttft_ms": _ttft_median(df, m.platform, m.arm, "cold", n),
                   "apc_cold_ttft_ms": apc.get((m.platform, n), np.nan)}
            for link, gb_s in links.items():
                rows.append({**row, "link": link, "link_gb_s": gb_s,
                             "model_load_ms": 1000 * kvmodel.load_time_s(n, bpt, gb_s) if bpt else np.nan})
    return pd.DataFrame(rows, columns=RELOAD_COLUMNS)
