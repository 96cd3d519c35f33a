"""The tables of the concurrent long conversations (``multiturn_long.csv``, ``chunk_sweep.csv``;
kvreuse.experiments.conversations): per platform, arm and history length, input tokens per
second, TTFT and TPOT, the hits by the server's counters and what a store moved, and each arm
against the experiment's ``reference_arm`` (APC alone; chunk 256) with the bootstrap CI of the
difference of medians (kvreuse.stats).

Rows: ``scope`` ``overall`` (every turn of every conversation at one history length, with the
phase's counters) and, for multiturn_long, ``turn`` (the requests of one turn across the
conversations: latencies only, since the conversations overlap in time and the counters are
read around the whole phase). A run that did not run is one row with its status and reason.

Input tokens per second: ``input_tps`` is the phase's prompt tokens over its wall time (study
002's "Input TPS", one value per run); its CI comes from the per-conversation rate
(``input_tps_conv_*``: a conversation's prompt tokens over the time from its first request's
start to its last request's end), n = the conversations. TPOT per request: (e2e - TTFT) /
(output tokens - 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import kernels, metrics, schema
from .lmcache import settings as lmcache_settings
from .phase_stats import OFFLOAD_COUNTERS, transfers
from .results import RunMeta
from .stats import bootstrap_ci, median_difference

PHASE_KIND = "conversations"
#: every column, in order (a table without runs still has them)
COLUMNS = (["platform", "arm", "arm_label", "chunk_size", "reference_arm", "status", "reason",
            "history_tokens", "n_clients", "scope", "turn", "n", "prompt_tokens_mean",
            "ttft_median_ms", "ttft_mean_ms", "ttft_ci95_lo_ms", "ttft_ci95_hi_ms",
            "tpot_median_ms", "tpot_mean_ms", "tpot_ci95_lo_ms", "tpot_ci95_hi_ms",
            "n_conversations", "input_tps_conv_median", "input_tps_conv_ci95_lo", "input_tps_conv_ci95_hi",
            "n_errors", "wall_s", "input_tps", "hit_tokens", "prefix_cache_hits", "external_prefix_cache_hits",
            "query_tokens", "hit_rate", "preemptions", "queue_ms_mean", "lmcache_hit_tokens",
            "kv_offload_load_bytes", "kv_offload_store_bytes",
            "loaded_bytes", "load_ms", "load_source", "stored_bytes", "store_ms", "store_source", "n_reference"]
           + [f"{m}_{k}" for m in ("ttft", "tpot") for k in ("saved_ms", "saved_ci95_lo_ms", "saved_ci95_hi_ms",
                                                            "speedup", "speedup_ci95_lo", "speedup_ci95_hi")]
           + ["input_tps_gain", "input_tps_gain_ci95_lo", "input_tps_gain_ci95_hi", "input_tps_ratio",
              "input_tps_ratio_ci95_lo", "input_tps_ratio_ci95_hi"])
#: the experiments whose table has a row per turn besides the overall rows
PER_TURN = ("multiturn_long",)


def prompt_tokens(g: pd.DataFrame) -> pd.Series:
    """Each request's prompt tokens by the server's usage, else as sent (``prompt_tokens_sent``)."""
    return g["prompt_tokens"].astype(float).fillna(g["prompt_tokens_sent"].astype(float))


def tpot_ms(g: pd.DataFrame) -> pd.Series:
    """Time per output token after the first, per request (NaN with fewer than two tokens)."""
    out = g["output_tokens"].astype(float)
    return ((g["e2e_ms"].astype(float) - g["ttft_ms"].astype(float)) / (out - 1)).where(out > 1)


def conversation_tps(g: pd.DataFrame) -> pd.Series:
    """Input tokens per second of each conversation: its prompt tokens over the time from its
    first request's start to its last request's end."""
    end = g["t_start"].astype(float) + g["e2e_ms"].astype(float) / 1000
    span = end.groupby(g["conversation"]).max() - g["t_start"].astype(float).groupby(g["conversation"]).min()
    tokens = prompt_tokens(g).groupby(g["conversation"]).sum()
    return (tokens / span).where(span > 0).dropna()


def latency(g: pd.DataFrame, *, per_conversation: bool) -> dict:
    """n, TTFT and TPOT (median, mean, CI of the median) of a set of successful requests; with
    ``per_conversation``, the conversations' input TPS too."""
    ttft, tpot = g["ttft_ms"].astype(float), tpot_ms(g)
    row = {"n": len(g), "prompt_tokens_mean": prompt_tokens(g).mean(),
           "ttft_median_ms": ttft.median(), "ttft_mean_ms": ttft.mean()}
    row["ttft_ci95_lo_ms"], row["ttft_ci95_hi_ms"] = bootstrap_ci(ttft)
    row.update(tpot_median_ms=tpot.median(), tpot_mean_ms=tpot.mean())
    row["tpot_ci95_lo_ms"], row["tpot_ci95_hi_ms"] = bootstrap_ci(tpot)
    if per_conversation:
        tps = conversation_tps(g)
        row.update(n_conversations=len(tps), input_tps_conv_median=tps.median())
        row["input_tps_conv_ci95_lo"], row["input_tps_conv_ci95_hi"] = bootstrap_ci(tps)
    return row


def versus(g: pd.DataFrame, ref: pd.DataFrame, *, per_conversation: bool) -> dict:
    """``g`` (an arm) against ``ref`` (the reference arm) on the same workload: TTFT and TPOT
    saved (reference - arm) and the speedup (reference / arm); input TPS gained (arm -
    reference) and its ratio (arm / reference); each with the bootstrap CI (kvreuse.stats)."""
    row = {"n_reference": len(ref)}
    for name, values in (("ttft", lambda x: x["ttft_ms"].astype(float)), ("tpot", tpot_ms)):
        d = median_difference(values(ref), values(g))
        row.update({f"{name}_saved_ms": d.diff_median_ms, f"{name}_saved_ci95_lo_ms": d.diff_ci95_lo_ms,
                    f"{name}_saved_ci95_hi_ms": d.diff_ci95_hi_ms, f"{name}_speedup": d.speedup,
                    f"{name}_speedup_ci95_lo": d.speedup_ci95_lo, f"{name}_speedup_ci95_hi": d.speedup_ci95_hi})
    if per_conversation:
        d = median_difference(conversation_tps(g), conversation_tps(ref))
        row.update(input_tps_gain=d.diff_median_ms, input_tps_gain_ci95_lo=d.diff_ci95_lo_ms,
                   input_tps_gain_ci95_hi=d.diff_ci95_hi_ms, input_tps_ratio=d.speedup,
                   input_tps_ratio_ci95_lo=d.speedup_ci95_lo, input_tps_ratio_ci95_hi=d.speedup_ci95_hi)
    return row


def counters(phase, prompt_tokens: float) -> dict:
    """The phase's hits by the server's counters, what its store moved, and its input TPS."""
    c = phase.counters or {}
    row = {"wall_s": phase.wall_s,
           "input_tps": prompt_tokens / phase.wall_s if phase.wall_s else np.nan,
           "hit_tokens": metrics.hit_tokens(c),
           "prefix_cache_hits": c.get("vllm:prefix_cache_hits", 0.0),
           "external_prefix_cache_hits": c.get("vllm:external_prefix_cache_hits", 0.0),
           "query_tokens": c.get("vllm:prefix_cache_queries", 0.0)}
    row["hit_rate"] = row["hit_tokens"] / row["query_tokens"] if row["query_tokens"] else np.nan
    # the GPU's KV cache may not hold every conversation at once (the H200's fixed 12 GiB, 98,304
    # tokens, against ten of ~20K): vLLM then queues requests and preempts running ones, which
    # TTFT includes; these say how much (vLLM's counters, summed over the phase)
    row["preemptions"] = c.get("vllm:num_preemptions", 0.0)
    queued = c.get("vllm:request_queue_time_seconds_count", 0.0)
    row["queue_ms_mean"] = 1000 * c.get("vllm:request_queue_time_seconds_sum", 0.0) / queued if queued else np.nan
    # in-process LMCache's own count (flushed every 10 s, so it may lag the phase's end)
    row["lmcache_hit_tokens"] = c.get("lmcache:num_hit_tokens", np.nan)
    for direction, (key_bytes, _) in OFFLOAD_COUNTERS.items():
        row[key_bytes.removeprefix("vllm:")] = c.get(key_bytes, np.nan)
    for direction, key in (("load", "loaded"), ("store", "stored")):
        nbytes, secs, source = transfers([phase], direction)
        row[f"{key}_bytes"], row[f"{direction}_ms"] = nbytes, secs * 1000
        row[f"{direction}_source"] = source
    return row


def chunk_size(m: RunMeta) -> float:
    """The arm's LMCache chunk size (its default where the arm leaves it out); NaN without LMCache."""
    lm = (m.arm_config or {}).get("lmcache")
    return float(lmcache_settings.settings(lm)["chunk_size"]) if lm else np.nan


def reference_arm(m: RunMeta) -> str:
    return schema.get(m.params or {}, "experiments", m.experiment, "reference_arm")


def conversations_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """The table of multiturn_long or chunk_sweep (the module's docstring)."""
    ok = df[(df["phase_kind"] == PHASE_KIND) & df["error"].isna()]
    errors = df[(df["phase_kind"] == PHASE_KIND) & df["error"].notna()]
    rows = []
    for m in metas:
        ref = reference_arm(m)
        head = {"platform": m.platform, "arm": m.arm, "arm_label": kernels.arm_label(m.arm, kernels.status(m)),
                "chunk_size": chunk_size(m), "reference_arm": ref, "status": m.status, "reason": m.reason or ""}
        if m.status != "ok":
            rows.append(head)
            continue
        per_turn = m.experiment in PER_TURN
        for phase in m.phases_of(PHASE_KIND):
            h = phase.prefix_tokens
            mine = ok[(ok.platform == m.platform) & (ok.arm == m.arm) & (ok.prefix_tokens == h)]
            theirs = ok[(ok.platform == m.platform) & (ok.arm == ref) & (ok.prefix_tokens == h)]
            n_errors = int(((errors.platform == m.platform) & (errors.arm == m.arm)
                            & (errors.prefix_tokens == h)).sum())
            row = {**head, "history_tokens": h, "n_clients": phase.max_concurrency, "scope": "overall",
                   "turn": np.nan, **latency(mine, per_conversation=True), "n_errors": n_errors,
                   **counters(phase, prompt_tokens(mine).sum())}
            if m.arm != ref and len(theirs):
                row.update(versus(mine, theirs, per_conversation=True))
            rows.append(row)
            if not per_turn:
                continue
            for turn, g in mine.groupby("turn", sort=True):
                row = {**head, "history_tokens": h, "n_clients": phase.max_concurrency, "scope": "turn",
                       "turn": turn, **latency(g, per_conversation=False)}
                t = theirs[theirs.turn == turn]
                if m.arm != ref and len(t):
                    row.update(versus(g, t, per_conversation=False))
                rows.append(row)
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))  # none (a test checks)
    return pd.DataFrame(rows, columns=COLUMNS + extra)
