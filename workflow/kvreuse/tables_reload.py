"""Reload against recompute after a restart, from the restart experiment's runs:

``reload_vs_recompute_table``  per run and prefix length (and link): the reloads
    (``post_restart_first``: a populated prefix sent again after the restart) against the
    recomputes (``post_restart_cold``: a never-seen prompt of the same length on the same
    restarted server), medians with their CIs, n on both sides and the CI of the difference
    (kvreuse.stats); the verdict at that length (kvreuse.verdict) with the hit tokens from the
    counters; the bytes and time of the loads from the store's own counters
    (kvreuse.phase_stats.transfers) and their GB/s against the link's nominal bandwidth
    (``platforms.<p>.links_gb_s``); and the analytic load time, KV bytes / bandwidth (with
    tensor parallelism, each GPU's share of the KV over its own link: :func:`link_bytes_per_token`);
``break_even_table``  per run: the break-even prefix length (kvreuse.breakeven) measured, and
    per link that of the analytic model, with bootstrap intervals.

Every run of the restart experiment has rows (APC too: its recomputes are the model's
reference, and its verdict says that nothing was reloaded); a run not run has one row with why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import breakeven, kernels, schema, verdict
from .phase_stats import (kv_bytes_per_token, l2_load_gb_s, link_bytes_per_token, lmcache_chunk_bytes,
                          tensor_parallel, transfers)
from .results import RunMeta
from .stats import bootstrap_ci, median_difference
from .tables_restart import lengths_of, phase_length, run_records

#: the restart experiment's kinds: the reload, the recompute, and the context of the figure
RELOAD, RECOMPUTE = "post_restart_first", "post_restart_cold"
CONTEXT_KINDS = {"populate": "populate", "warm": "warm", "steady": "post_restart_steady"}

RELOAD_COLUMNS = [
    "platform", "arm", "arm_label", "store", "status", "reason", "lmcache_kernels", "prefix_tokens",
    "populate_ttft_ms", "warm_ttft_ms", "steady_ttft_ms",
    "reload_ttft_ms", "reload_ttft_ci95_lo_ms", "reload_ttft_ci95_hi_ms", "n_reload",
    "recompute_ttft_ms", "recompute_ttft_ci95_lo_ms", "recompute_ttft_ci95_hi_ms", "n_recompute",
    "reload_minus_recompute_ms", "reload_minus_recompute_ci95_lo_ms", "reload_minus_recompute_ci95_hi_ms",
    "reload_speedup", "reload_speedup_ci95_lo", "reload_speedup_ci95_hi",
    "verdict", "hit_fraction", "n_prefixes", "n_prefixes_persisted", "reload_hit_tokens", "reusable_tokens",
    "loaded_bytes", "load_ms", "load_source", "achieved_gb_s", "l2_load_gb_s", "recompute_prefill_ms",
    "kv_bytes_per_token", "kv_bytes_model", "link", "link_gb_s", "model_load_ms", "link_fraction",
]

BREAK_EVEN_COLUMNS = [
    "platform", "arm", "store", "estimate", "link", "link_gb_s", "model_overhead_ms",
    "break_even_tokens", "ci_low", "ci_high", "ci_low_where", "ci_high_where", "status", "reason",
    "verdict", "arm_label", "lmcache_kernels", "shortest_tokens", "longest_tokens", "lengths", "n_per_length",
    "lengths_not_reloaded",
]


def store_label(m: RunMeta) -> str:
    """What holds the KV cache across the restart, in words, from the run's arm config and the
    connector its vLLM was given (kvreuse.verdict.connector)."""
    arm_config = m.arm_config or {}
    lm = arm_config.get("lmcache")
    if lm:
        where = "an LMCache server" if lm.get("mode") == "server" else "LMCache in vLLM's process"
        return f"{lm.get('store', '?')} store of {where}"
    if verdict.connector(m):
        args = " ".join(map(str, (m.server or {}).get("vllm_args") or []))
        return "vLLM's own offloading" if "Offloading" in args or "--kv-offloading" in args else "a KV connector"
    caching = schema.get(arm_config, "arms", "*", "prefix_caching")
    return "none (vLLM's GPU prefix cache)" if caching else "none"


def _ttft(records: pd.DataFrame, kind: str, length: int) -> np.ndarray:
    """The successful requests' TTFTs of a kind at a length."""
    if records.empty:
        return np.array([])
    s = records[(records.phase_kind == kind) & (records.prefix_tokens == length) & records.error.isna()]
    return s["ttft_ms"].astype(float).dropna().to_numpy()


def _median(v: np.ndarray) -> float:
    return float(np.median(v)) if len(v) else np.nan


def _prefill_ms(phases) -> float:
    """vLLM's own mean prefill time of the phases' requests (its histogram's sum / count)."""
    count = sum(ph.counters.get("vllm:request_prefill_time_seconds_count", 0.0) for ph in phases)
    total = sum(ph.counters.get("vllm:request_prefill_time_seconds_sum", 0.0) for ph in phases)
    return 1000 * total / count if count else np.nan


def _base(m: RunMeta) -> dict:
    state = kernels.status(m)  # a run on LMCache's torch fallback is marked in its label
    return {"platform": m.platform, "arm": m.arm, "arm_label": kernels.arm_label(m.arm, state),
            "store": store_label(m), "status": m.status, "reason": m.reason or "",
            "lmcache_kernels": state}


def _links(links_gb_s: dict | None, platform: str) -> list[tuple[str | None, float]]:
    links = (links_gb_s or {}).get(platform) or {}
    return list(links.items()) or [(None, np.nan)]


def _length_row(m: RunMeta, records: pd.DataFrame, length: int, judged: list) -> dict:
    """The measured columns of one run at one prefix length (no link)."""
    reload, recompute = _ttft(records, RELOAD, length), _ttft(records, RECOMPUTE, length)
    row = {"prefix_tokens": length}
    for col, kind in CONTEXT_KINDS.items():
        row[f"{col}_ttft_ms"] = _median(_ttft(records, kind, length))
    for side, v in (("reload", reload), ("recompute", recompute)):
        lo, hi = bootstrap_ci(v)
        row.update({f"{side}_ttft_ms": _median(v), f"{side}_ttft_ci95_lo_ms": lo,
                    f"{side}_ttft_ci95_hi_ms": hi, f"n_{side}": len(v)})
    if len(reload) and len(recompute):
        d = median_difference(recompute, reload)  # recompute - reload: the time reloading saves
        row.update({"reload_minus_recompute_ms": -d.diff_median_ms,
                    "reload_minus_recompute_ci95_lo_ms": -d.diff_ci95_hi_ms,
                    "reload_minus_recompute_ci95_hi_ms": -d.diff_ci95_lo_ms,
                    "reload_speedup": d.speedup, "reload_speedup_ci95_lo": d.speedup_ci95_lo,
                    "reload_speedup_ci95_hi": d.speedup_ci95_hi})
    here = _at_length(m, judged, length)
    v = verdict.run_verdict(here)
    row.update({"verdict": v.get("verdict"), "hit_fraction": v.get("hit_fraction"),
                "n_prefixes": v.get("n_prefixes"), "n_prefixes_persisted": v.get("n_prefixes_persisted"),
                "reload_hit_tokens": float(sum(x.hit_tokens for x in here)),
                "reusable_tokens": float(sum(x.reusable_tokens for x in here))})
    firsts = [ph for ph in m.phases_of(RELOAD) if phase_length(m, ph) == length]
    bpt = kv_bytes_per_token(m)
    # NaN where the store counted no load
    nbytes, secs, source = transfers(firsts, "load", lmcache_chunk_bytes(m))
    row.update({"loaded_bytes": nbytes, "load_ms": 1000 * secs, "load_source": source,
                "achieved_gb_s": nbytes / secs / 1e9 if source and secs > 0 else np.nan,
                "l2_load_gb_s": l2_load_gb_s(firsts),
                "recompute_prefill_ms": _prefill_ms([ph for ph in m.phases_of(RECOMPUTE)
                                                     if phase_length(m, ph) == length])})
    row.update({"kv_bytes_per_token": bpt, "kv_bytes_model": length * bpt if bpt else np.nan})
    return row


def reload_vs_recompute_table(df: pd.DataFrame, metas: list[RunMeta],
                              links_gb_s: dict | None = None) -> pd.DataFrame:
    """One row per restart run, prefix length and link of its platform (one row with an
    empty link where the platform names none); a run that did not measure: one row, why."""
    rows = []
    for m in metas:
        base = _base(m)
        lengths = lengths_of(m, RELOAD) if m.status == "ok" else []
        if not lengths:
            rows.append(base)
            continue
        records = run_records(df, m)
        judged = verdict.prefix_verdicts(m, records)
        for length in lengths:
            row = {**base, **_length_row(m, records, length, judged)}
            bpt = link_bytes_per_token(m, row["kv_bytes_per_token"])
            for link, gb_s in _links(links_gb_s, m.platform):
                model = breakeven.transfer_ms(length, bpt, gb_s) if bpt and link else np.nan
                rows.append({**row, "link": link, "link_gb_s": gb_s, "model_load_ms": model,
                             "link_fraction": row["achieved_gb_s"] / gb_s if link else np.nan})
    return pd.DataFrame(rows, columns=RELOAD_COLUMNS)


def _at_length(m: RunMeta, judged: list, length: int) -> list:
    """The prefix verdicts (kvreuse.verdict.prefix_verdicts) of the prefixes of one length."""
    given = (m.params or {}).get("prefix_tokens")
    return [v for v in judged if (v.prefix_tokens if v.prefix_tokens is not None else given) == length]


def _samples(records: pd.DataFrame, lengths: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    return {n: (_ttft(records, RELOAD, n), _ttft(records, RECOMPUTE, n)) for n in lengths}


def break_even_table(df: pd.DataFrame, metas: list[RunMeta], links_gb_s: dict | None = None) -> pd.DataFrame:
    """Per restart run: the measured break-even (``estimate`` measured: reloads against
    recomputes per length, kvreuse.breakeven); and per link of its platform the model's
    (``estimate`` model: KV bytes / nominal bandwidth + the fixed overhead fitted to the run's
    reloads, ``model_overhead_ms``, zero where nothing was reloaded, against the run's measured
    recomputes). Only the lengths at which the counters show reloads enter the measured
    break-even and the overhead (``lengths_not_reloaded``: the others, whose first request after
    the restart recomputed, a store that kept only part of what was populated); a run that
    reloaded at no length (verdict not persisted) has status ``not persisted`` and no measured
    break-even, and its model no overhead; a run not run, status ``not run``."""
    rows = []
    for m in metas:
        base = {k: v for k, v in _base(m).items() if k != "status"}
        if m.status != "ok":
            rows.append({**base, "estimate": "measured", "status": "not run"})
            continue
        records = run_records(df, m)
        lengths = lengths_of(m, RELOAD)
        samples = _samples(records, lengths)
        per_prefix = verdict.prefix_verdicts(m, records)
        judged = verdict.run_verdict(per_prefix).get("verdict")
        reloaded = [n for n in lengths
                    if verdict.run_verdict(_at_length(m, per_prefix, n)).get("verdict") != verdict.NOT_PERSISTED]
        measured = breakeven.break_even({n: samples[n] for n in reloaded} if reloaded else samples)
        row = {**base, "estimate": "measured", "verdict": judged, **measured.to_dict(),
               "lengths_not_reloaded": " ".join(str(n) for n in lengths if reloaded and n not in reloaded)}
        if not reloaded:
            row.update(break_even_tokens=np.nan, ci_low=np.nan, ci_high=np.nan, ci_low_where="",
                       ci_high_where="", status="not persisted",
                       reason="the counters show no reload after the restart: each first request recomputed")
        rows.append(row)
        bpt = link_bytes_per_token(m, kv_bytes_per_token(m))
        for link, gb_s in _links(links_gb_s, m.platform):
            if not (link and bpt):
                continue
            overhead = breakeven.fixed_overhead_ms({n: _median(samples[n][0]) for n in reloaded}, bpt, gb_s)
            overhead = 0.0 if np.isnan(overhead) else overhead  # nothing reloaded: the transfer alone
            model = {n: ([breakeven.model_reload_ms(n, bpt, gb_s, overhead)], b) for n, (_, b) in samples.items()}
            est = breakeven.break_even(model, fixed_reload=True)
            rows.append({**base, "estimate": "model", "link": link, "link_gb_s": gb_s,
                         "model_overhead_ms": overhead, "verdict": judged, **est.to_dict()})
    return pd.DataFrame(rows, columns=BREAK_EVEN_COLUMNS)


TENSOR_PARALLEL_COLUMNS = [
    "platform", "arm", "arm_label", "store", "model", "tensor_parallel", "kv_bytes_per_token",
    "kv_bytes_per_token_per_gpu", "prefix_tokens", "n_reload", "reload_ttft_ms", "n_recompute",
    "recompute_ttft_ms", "reload_minus_recompute_ms", "reload_minus_recompute_ci95_lo_ms",
    "reload_minus_recompute_ci95_hi_ms", "reload_speedup", "reload_speedup_ci95_lo", "reload_speedup_ci95_hi",
    "verdict", "loaded_bytes", "achieved_gb_s", "break_even_status", "break_even_tokens",
    "break_even_ci_low", "break_even_ci_high",
]


def tensor_parallel_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """Reload against recompute per prefix length for every store (arm) that a restart run
    measured with tensor parallelism, beside the same store's runs at other parallelism (one GPU):
    each row a run's length, with the run's model, its ``--tensor-parallel-size``, the model's KV
    bytes per token and one GPU's share of them, and the run's measured break-even
    (``break_even_status`` and its bootstrap interval, :func:`break_even_table`). Empty where no
    restart run used several GPUs."""
    arms = {m.arm for m in metas if m.status == "ok" and tensor_parallel(m) > 1}
    runs = [m for m in metas if m.status == "ok" and m.arm in arms]
    if not runs:
        return pd.DataFrame(columns=TENSOR_PARALLEL_COLUMNS)
    per_length = reload_vs_recompute_table(df, runs)
    per_length = per_length[per_length.status == "ok"]
    be = break_even_table(df, runs)
    be = be[be.estimate == "measured"][["platform", "arm", "status", "break_even_tokens", "ci_low", "ci_high"]]
    be = be.rename(columns={"status": "break_even_status", "ci_low": "break_even_ci_low",
                            "ci_high": "break_even_ci_high"})
    info = pd.DataFrame([{"platform": m.platform, "arm": m.arm, "model": (m.model or {}).get("name"),
                          "tensor_parallel": tensor_parallel(m),
                          "kv_bytes_per_token_per_gpu": link_bytes_per_token(m, kv_bytes_per_token(m))}
                         for m in runs])
    out = per_length.merge(info, on=["platform", "arm"]).merge(be, on=["platform", "arm"], how="left")
    return out.sort_values(["arm", "tensor_parallel", "platform", "prefix_tokens"])[TENSOR_PARALLEL_COLUMNS]
