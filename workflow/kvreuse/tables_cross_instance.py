"""cross_instance.csv: does a second vLLM instance reuse what the first stored in a shared
LMCache server (kvreuse.experiments.sharing)?

One row per platform, arm and prefix length of a measured run: instance B's first request on
a prefix that instance A stored (``cross_first``) against a never-seen prefix of the same
length on B (``cross_cold``), each side's median TTFT with its bootstrap CI and n, the
difference of the medians (cold - first: the time the shared store saved) and their ratio with
their CIs (kvreuse.stats; paired by prefix i, the two requests of a pair sent one after the
other on B), and what B's counters say: per prefix, the hit fraction is B's external hits
(``vllm:external_prefix_cache_hits``) over the prompt's reusable tokens (kvreuse.verdict:
less its last token, whole LMCache chunks); the median and the smallest over the length's
prefixes, LMCache's own lookup hits beside them, and the hits of the never-seen prompts (the
control: none expected). ``output_equal``: each of B's first outputs equals A's output on the
same prompt. ``gpus_a``, ``gpus_b``: the job's GPUs (indices) each instance ran on, as its
start in the meta recorded them (``server_starts[].devices``; an instance that was not pinned
ran on all of the job's GPUs, as many as the platform gives a job), and ``cross_gpu``: whether
the two share none. A run that did not run is one row with its status and reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics, platforms, schema, verdict
from .results import RunMeta
from .stats import bootstrap_ci, median_difference

#: LMCache server's tokens found by a lookup (L1 + L2), the OpenTelemetry counter
#: ``lmcache_mp.lookup_hit`` (unit tokens) as its /metrics exports it (lmcache 0.5.3:
#: v1/mp_observability/subscribers/metrics/lookup.py; seen on the H200 in
#: profiles/gpu-node/notes/2026-11-29-h200-cross-instance-probe.json)
LMCACHE_HITS = "lmcache_mp_lookup_hit_tokens"
FIRST, COLD, POPULATE = "cross_first", "cross_cold", "populate"

COLUMNS = ["platform", "arm", "status", "reason", "prefix_tokens", "instance_a_stopped",
           "gpus_a", "gpus_b", "cross_gpu",
           "n_cross_first", "n_cross_cold",
           "cross_first_ttft_median_ms", "cross_first_ttft_ci95_lo_ms", "cross_first_ttft_ci95_hi_ms",
           "cross_cold_ttft_median_ms", "cross_cold_ttft_ci95_lo_ms", "cross_cold_ttft_ci95_hi_ms",
           "diff_median_ms", "diff_ci95_lo_ms", "diff_ci95_hi_ms",
           "speedup", "speedup_ci95_lo", "speedup_ci95_hi",
           "hit_tokens", "reusable_tokens", "hit_fraction", "hit_fraction_min", "lmcache_hit_tokens",
           "cross_cold_hit_tokens", "output_equal", "cuda_kernels"]


def _ttfts(records: pd.DataFrame, kind: str, length: int) -> pd.Series:
    """The successful requests' TTFTs of one kind at one length, by prefix i (``repeat``)."""
    s = records[(records.phase_kind == kind) & (records.prefix_tokens == length) & records.error.isna()]
    return s.set_index(s["repeat"].astype(int))["ttft_ms"].astype(float).sort_index()


def _outputs(records: pd.DataFrame, kind: str, length: int) -> dict[int, list]:
    s = records[(records.phase_kind == kind) & (records.prefix_tokens == length) & records.error.isna()]
    return {int(r): list(o or []) for r, o in zip(s["repeat"], s["output_token_ids"])}


def _prompt_tokens(records: pd.DataFrame, phase: str) -> float:
    """The prompt's length as the server counted it (else as sent) in one phase's records."""
    s = records[records.phase == phase]
    for col in ("prompt_tokens", "prompt_tokens_sent"):
        v = s[col].dropna()
        if len(v):
            return float(v.iloc[0])
    return np.nan


def _hits(meta: RunMeta, records: pd.DataFrame, length: int) -> dict:
    """B's counters at one length: per prefix, its external hits over its reusable tokens."""
    unit = verdict.reuse_unit(meta)
    firsts = [(name, ph) for name, ph in meta.phases.items() if ph.kind == FIRST and ph.prefix_tokens == length]
    colds = [ph for ph in meta.phases.values() if ph.kind == COLD and ph.prefix_tokens == length]
    fractions, hits, reusable = [], 0.0, np.nan
    for name, ph in firsts:
        prompt = _prompt_tokens(records, name)
        reusable = verdict.reusable_tokens(length + 1 if np.isnan(prompt) else prompt, unit)
        h = verdict.hits(meta, ph.counters)
        hits += h
        fractions.append(min(h / reusable, 1.0) if reusable else np.nan)
    lm = [ph.counters[LMCACHE_HITS] for _, ph in firsts if LMCACHE_HITS in ph.counters]
    f = np.array(fractions, dtype=float)
    known = np.isfinite(f).any()
    return {"hit_tokens": hits if firsts else np.nan, "reusable_tokens": reusable,
            "hit_fraction": float(np.nanmedian(f)) if known else np.nan,
            "hit_fraction_min": float(np.nanmin(f)) if known else np.nan,
            "lmcache_hit_tokens": float(sum(lm)) if lm else np.nan,
            "cross_cold_hit_tokens": float(sum(metrics.hit_tokens(ph.counters) for ph in colds)) if colds else np.nan}


def _output_equal(records: pd.DataFrame, length: int) -> bool | None:
    """Whether each of B's first outputs equals A's on the same prompt (None: none to compare)."""
    before, after = _outputs(records, POPULATE, length), _outputs(records, FIRST, length)
    pairs = [(before[i], after[i]) for i in after if i in before and before[i] and after[i]]
    return all(a == b for a, b in pairs) if pairs else None


def _length_row(meta: RunMeta, records: pd.DataFrame, length: int) -> dict:
    first, cold = _ttfts(records, FIRST, length), _ttfts(records, COLD, length)
    both = first.index.intersection(cold.index)
    d = median_difference(cold[both], first[both], paired=True)  # cold - first: the time saved
    f_lo, f_hi = bootstrap_ci(first)
    c_lo, c_hi = bootstrap_ci(cold)
    return {"n_cross_first": len(first), "n_cross_cold": len(cold),
            "cross_first_ttft_median_ms": first.median(), "cross_first_ttft_ci95_lo_ms": f_lo,
            "cross_first_ttft_ci95_hi_ms": f_hi,
            "cross_cold_ttft_median_ms": cold.median(), "cross_cold_ttft_ci95_lo_ms": c_lo,
            "cross_cold_ttft_ci95_hi_ms": c_hi,
            "diff_median_ms": d.diff_median_ms, "diff_ci95_lo_ms": d.diff_ci95_lo_ms,
            "diff_ci95_hi_ms": d.diff_ci95_hi_ms, "speedup": d.speedup,
            "speedup_ci95_lo": d.speedup_ci95_lo, "speedup_ci95_hi": d.speedup_ci95_hi,
            **_hits(meta, records, length), "output_equal": _output_equal(records, length)}


def instance_gpus(m: RunMeta) -> dict[str, list[int]]:
    """Per instance (a, b) the job's GPUs it ran on: its start's ``devices``, else (not pinned,
    or a run made before starts recorded them) every GPU a job of the platform gets."""
    job = list(range(platforms.gpus(m.platform))) if m.platform in platforms.BY_NAME else []
    out = {}
    for s in m.server_starts or []:
        inst = s.get("process", "").removeprefix("vllm-")
        if inst in ("a", "b") and inst not in out:
            out[inst] = list(s["devices"]) if s.get("devices") is not None else job
    return out


def _gpu_columns(m: RunMeta) -> dict:
    gpus = instance_gpus(m)
    a, b = gpus.get("a"), gpus.get("b")
    return {"gpus_a": ",".join(map(str, a)) if a is not None else None,
            "gpus_b": ",".join(map(str, b)) if b is not None else None,
            "cross_gpu": bool(a and b and not set(a) & set(b)) if a is not None and b is not None else None}


def cross_instance_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """One row per platform, arm and prefix length of each measured run (successful requests
    only; warm-ups left out); one row with the status and reason of a run that did not run."""
    rows = []
    for m in metas:
        base = {"platform": m.platform, "arm": m.arm, "status": m.status, "reason": m.reason or ""}
        if m.status != "ok":
            rows.append(base)
            continue
        records = df[(df.platform == m.platform) & (df.experiment == m.experiment) & (df.arm == m.arm)]
        base["instance_a_stopped"] = bool(schema.get(m.params, "experiments", "cross_instance", "stop_instance_a"))
        base["cuda_kernels"] = (m.lmcache or {}).get("cuda_kernels")
        base.update(_gpu_columns(m))
        lengths = sorted({int(ph.prefix_tokens) for ph in m.phases.values() if ph.kind == FIRST})
        rows += [{**base, "prefix_tokens": n, **_length_row(m, records, n)} for n in lengths]
    return pd.DataFrame(rows, columns=COLUMNS)
