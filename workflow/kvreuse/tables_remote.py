"""remote.csv: LMCache's remote stores (Redis, LMCache's remote server), cache hit against cache
miss after vLLM's restart (kvreuse.experiments.remote; source study 002's remote backends).

One row per platform and arm of a measured run: the hits (``remote_hit``: a populated prompt
again, the first request on it since vLLM restarted, so its KV can only come from the remote
store) against the misses (``remote_miss``: a never-seen prompt of the same length), each side's
median TTFT with its bootstrap CI and n, the difference of the medians (miss - hit: the time the
store saved) and the ratio miss / hit (the study's "performance boost") with their CIs
(kvreuse.stats; paired by prompt i, the two requests of a pair sent one after the other), and
what the counters say: per prompt the hit fraction is vLLM's external hits
(``vllm:external_prefix_cache_hits``) over the prompt's reusable tokens (kvreuse.verdict), the
median and the smallest over the prompts, and the misses' hits (the control: none expected);
whether the store kept the prompts' KV across vLLM's restart by those counters alone
(``persistence``, from the smallest fraction: kvreuse.verdict.classify_hits; "not persisted"
means the populated prompts were recomputed, so the difference is not a hit's);
what the hits loaded and at what rate, by LMCache's own log (``loaded_gb_per_hit``, ``load_gb_s``);
what LMCache stored from the populated prompts (``stored_gb``, its log) against what the store
received by its own side (``store_grew_gb``: its process's resident memory before vLLM's stop
less before the populated prompts; runs made before it was recorded leave it empty); and how
many of LMCache's lookups timed out after the restart (``lookup_timeouts``, from vLLM's log:
each a hit the store may have held, served as a miss; empty for runs made before it was counted)
and how long the run waited before the measured requests for LMCache's remote writes in flight
to land (``settle_hit_median_s``, ``settle_miss_median_s``: the medians of the waits before the
hits and before the misses, kvreuse.experiments.remote.settle; a hit's wait is the previous
miss's writes; empty for runs made before the run waited).
The remote store's kind and version come from the meta. A run that did not run is one row with
its status and reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics, verdict
from .phase_stats import transfers
from .experiments.remote import HIT, MISS, POPULATE
from .results import RunMeta
from .stats import bootstrap_ci, median_difference

COLUMNS = ["platform", "arm", "status", "reason", "store", "store_version", "prefix_tokens",
           "n_hit", "n_miss",
           "hit_ttft_median_ms", "hit_ttft_ci95_lo_ms", "hit_ttft_ci95_hi_ms",
           "miss_ttft_median_ms", "miss_ttft_ci95_lo_ms", "miss_ttft_ci95_hi_ms",
           "diff_median_ms", "diff_ci95_lo_ms", "diff_ci95_hi_ms",
           "speedup", "speedup_ci95_lo", "speedup_ci95_hi",
           "hit_tokens", "reusable_tokens", "hit_fraction", "hit_fraction_min", "persistence", "miss_hit_tokens",
           "loaded_gb_per_hit", "load_gb_s", "load_source", "stored_gb", "store_grew_gb", "lookup_timeouts",
           "settle_hit_median_s", "settle_miss_median_s", "cuda_kernels"]


def _ttfts(records: pd.DataFrame, kind: str) -> pd.Series:
    """The successful requests' TTFTs of one kind, by prompt i (``repeat``)."""
    s = records[(records.phase_kind == kind) & records.error.isna()]
    return s.set_index(s["repeat"].astype(int))["ttft_ms"].astype(float).sort_index()


def _hits(meta: RunMeta, records: pd.DataFrame) -> dict:
    """Per hit prompt, vLLM's external hits over its reusable tokens; the misses' hits."""
    unit = verdict.reuse_unit(meta)
    fractions, hits, reusable = [], 0.0, np.nan
    hit_phases = [(n, ph) for n, ph in meta.phases.items() if ph.kind == HIT]
    for name, ph in hit_phases:
        sent = records[records.phase == name]["prompt_tokens"].dropna()
        prompt = float(sent.iloc[0]) if len(sent) else float(ph.prefix_tokens or 0) + 1
        reusable = verdict.reusable_tokens(prompt, unit)
        h = verdict.hits(meta, ph.counters)
        hits += h
        fractions.append(min(h / reusable, 1.0) if reusable else np.nan)
    misses = [ph for ph in meta.phases.values() if ph.kind == MISS]
    f = np.array(fractions, dtype=float)
    known = np.isfinite(f).any()
    return {"hit_tokens": hits if hit_phases else np.nan, "reusable_tokens": reusable,
            "hit_fraction": float(np.nanmedian(f)) if known else np.nan,
            "hit_fraction_min": float(np.nanmin(f)) if known else np.nan,
            "persistence": verdict.classify_hits(float(np.nanmin(f))) if known else None,
            "miss_hit_tokens": float(sum(metrics.hit_tokens(ph.counters) for ph in misses)) if misses else np.nan}


def _row(meta: RunMeta, records: pd.DataFrame) -> dict:
    hit, miss = _ttfts(records, HIT), _ttfts(records, MISS)
    both = hit.index.intersection(miss.index)
    d = median_difference(miss[both], hit[both], paired=True)  # miss - hit: the time the store saved
    h_lo, h_hi = bootstrap_ci(hit)
    m_lo, m_hi = bootstrap_ci(miss)
    return {"n_hit": len(hit), "n_miss": len(miss),
            "hit_ttft_median_ms": hit.median(), "hit_ttft_ci95_lo_ms": h_lo, "hit_ttft_ci95_hi_ms": h_hi,
            "miss_ttft_median_ms": miss.median(), "miss_ttft_ci95_lo_ms": m_lo, "miss_ttft_ci95_hi_ms": m_hi,
            "diff_median_ms": d.diff_median_ms, "diff_ci95_lo_ms": d.diff_ci95_lo_ms,
            "diff_ci95_hi_ms": d.diff_ci95_hi_ms, "speedup": d.speedup,
            "speedup_ci95_lo": d.speedup_ci95_lo, "speedup_ci95_hi": d.speedup_ci95_hi,
            **_hits(meta, records), **_loads(meta), **_stored(meta)}


def _loads(meta: RunMeta) -> dict:
    """What the hits loaded from the store and at what rate, by the store's own account
    (kvreuse.phase_stats.transfers: LMCache's log lines): GB per hit and GB/s."""
    hits = [ph for ph in meta.phases.values() if ph.kind == HIT]
    nbytes, secs, source = transfers(hits, "load")
    if not hits or not (nbytes > 0 and secs > 0):
        return {"loaded_gb_per_hit": np.nan, "load_gb_s": np.nan, "load_source": ""}
    return {"loaded_gb_per_hit": nbytes / 1e9 / len(hits), "load_gb_s": nbytes / 1e9 / secs, "load_source": source}


def _stored(meta: RunMeta) -> dict:
    """What LMCache stored from the populated prompts (GB, by its log), how much the store's
    process grew over them (GB), how many lookups timed out after the restart and the median
    waits for LMCache's remote writes before the hits and the misses (s)
    (kvreuse.experiments.remote's ``store_after_stop``)."""
    populated = [ph for ph in meta.phases.values() if ph.kind == POPULATE]
    nbytes, _, _ = transfers(populated, "store")
    held = meta.store_after_stop or {}
    before, after = held.get("store_rss_bytes_before_populate"), held.get("store_rss_bytes_before_stop")
    return {"stored_gb": nbytes / 1e9 if nbytes > 0 else np.nan,
            "store_grew_gb": (_num(after) - _num(before)) / 1e9,
            "lookup_timeouts": _num(held.get("lookup_timeouts_after_restart")),
            **{f"settle_{kind}_median_s": _median_wait(held.get("settle_wait_s"), phases)
               for kind, phases in (("hit", _names(meta, HIT)), ("miss", _names(meta, MISS)))}}


def _names(meta: RunMeta, kind: str) -> set[str]:
    """The names of the meta's phases of one kind."""
    return {name for name, ph in meta.phases.items() if ph.kind == kind}


def _median_wait(waits, phases: set[str]) -> float:
    """The median of the recorded waits (s) before the given phases, NaN where none was recorded."""
    values = [float(v) for name, v in (waits or {}).items() if name in phases and isinstance(v, (int, float))]
    return float(np.median(values)) if values else np.nan


def _num(value) -> float:
    """A number the meta recorded, NaN where it recorded none (a run made before it was)."""
    return float(value) if isinstance(value, (int, float)) else np.nan


def remote_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """One row per platform and arm (successful requests only; warm-ups left out); a run that
    did not run is one row with its status and reason."""
    rows = []
    for m in metas:
        store = (m.server.get("remote_store") or {}) if isinstance(m.server, dict) else {}
        base = {"platform": m.platform, "arm": m.arm, "status": m.status, "reason": m.reason or "",
                "store": ((m.arm_config or {}).get("lmcache") or {}).get("store"),
                "store_version": store.get("version")}
        if m.status != "ok":
            rows.append(base)
            continue
        records = df[(df.platform == m.platform) & (df.experiment == m.experiment) & (df.arm == m.arm)]
        lengths = {int(ph.prefix_tokens) for ph in m.phases.values() if ph.kind == HIT}
        rows.append({**base, "prefix_tokens": min(lengths) if lengths else np.nan,
                     "cuda_kernels": (m.lmcache or {}).get("cuda_kernels"), **_row(m, records)})
    return pd.DataFrame(rows, columns=COLUMNS)
