"""Per-phase statistics that every table builds on: latency statistics of successful
requests (``latency_stats``), the server's hit counters per phase (``counter_rows``,
``summed_counters``), both per table key (``phase_table``), and the KV bytes a store moved in
phases (``transfers``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import kvmodel, metrics, plan
from .results import Phase, RunMeta
from .stats import bootstrap_ci, tail


def latency_stats(g: pd.DataFrame) -> pd.Series:
    ok = g[g["error"].isna()]
    ttft = ok["ttft_ms"].astype(float)
    lo, hi = bootstrap_ci(ttft)
    itl = [x for xs in ok["itl_ms"] for x in (xs or [])]
    return pd.Series({
        "n": len(ok), "n_errors": int(g["error"].notna().sum()),
        "ttft_median_ms": ttft.median(), **tail(ttft),  # p99 from 100 requests, else NaN; max always
        "ttft_mean_ms": ttft.mean(), "ttft_ci95_lo_ms": lo, "ttft_ci95_hi_ms": hi,
        "e2e_median_ms": ok["e2e_ms"].astype(float).median(),
        "itl_median_ms": float(np.median(itl)) if itl else np.nan,
        "prompt_tokens": ok["prompt_tokens"].median() if "prompt_tokens" in ok else np.nan,
        "cached_tokens": ok["cached_tokens"].median() if "cached_tokens" in ok else np.nan,
    })


#: counters summed over the phases a table row stands for (hit_rate: hits / queries of the sums)
COUNTER_COLUMNS = ["hit_tokens", "prefix_cache_hits", "external_prefix_cache_hits", "query_tokens"]
#: a phase's fields that a table row may be keyed by
PHASE_FIELDS = ["prefix_tokens", "turn", "context_tokens", "request_rate", "repeat"]


def counter_rows(metas: list[RunMeta]) -> pd.DataFrame:
    """One row per phase of every run: its name, kind, fields and hit counters."""
    rows = []
    for m in metas:
        for name, ph in m.phases.items():
            c = ph.counters
            rows.append({"platform": m.platform, "arm": m.arm, "name": name, "kind": ph.kind,
                         **{f: getattr(ph, f) for f in PHASE_FIELDS},
                         "hit_tokens": metrics.hit_tokens(c),
                         "prefix_cache_hits": c.get("vllm:prefix_cache_hits", 0.0),
                         "external_prefix_cache_hits": c.get("vllm:external_prefix_cache_hits", 0.0),
                         "query_tokens": c.get("vllm:prefix_cache_queries", 0.0)})
    return pd.DataFrame(rows, columns=["platform", "arm", "name", "kind", *PHASE_FIELDS, *COUNTER_COLUMNS])


def summed_counters(metas: list[RunMeta], keys: list[str], by: str) -> pd.DataFrame:
    """The counters of the phases (warm-ups left out) summed per ``keys``; the ``phase`` key
    is the phase's kind (``by="kind"``) or its name (``by="name"``)."""
    c = counter_rows(metas)
    c = c[c["kind"] != "warmup"].assign(phase=lambda t: t["kind"] if by == "kind" else t["name"])
    summed = c.groupby(keys, sort=False)[COUNTER_COLUMNS].sum().reset_index()
    summed["hit_rate"] = (summed["prefix_cache_hits"] / summed["query_tokens"]).where(summed["query_tokens"] > 0)
    return summed


def phase_table(df: pd.DataFrame, metas: list[RunMeta], keys: list[str], by: str = "kind") -> pd.DataFrame:
    """Latency statistics and summed counters per ``keys`` (record columns; ``kind`` or
    ``phase``). ``by="kind"``: the ``phase`` column holds the phase's kind, so the n samples of a
    kind (``cold_0``, ``cold_1`` ...) are one row; ``by="name"``: one row per phase."""
    df = df[df["phase_kind"] != "warmup"]  # before the measurement and after a restart
    if by == "kind":
        df = df.assign(phase=df["phase_kind"])
    if df.empty:
        return pd.DataFrame(columns=keys + ["n"])
    stats = df.groupby(keys, sort=False).apply(latency_stats, include_groups=False).reset_index()
    if "phase" in keys or "kind" in keys:
        summed = summed_counters(metas, keys, by)
        for k in keys:  # record columns with gaps are floats: the phases' fields likewise
            if stats[k].dtype.kind == "f":
                summed[k] = summed[k].astype(float)
        stats = stats.merge(summed, on=keys, how="left")
    return stats


#: vLLM's own offloading (OffloadingConnector, kvreuse.offload): bytes and seconds of its
#: transfers between the GPU and the offload store, per direction (vllm 0.26.0:
#: distributed/kv_transfer/kv_connector/v1/offloading/metrics.py)
OFFLOAD_COUNTERS = {"load": ("vllm:kv_offload_load_bytes", "vllm:kv_offload_load_time"),
                    "store": ("vllm:kv_offload_store_bytes", "vllm:kv_offload_store_time")}
#: where :func:`transfers` found its numbers
SOURCE_LMCACHE_LOG = {"load": "lmcache log: retrieve", "store": "lmcache log: store"}
SOURCE_LMCACHE_SERVER = "lmcache server: h2d staging DMA"
#: LMCache 0.5.3's server counts chunks loaded and the L1-to-GPU (``l0_l1``) throughput of each
#: load (a histogram, GB/s), not bytes and seconds (v1/multiprocess metrics)
SOURCE_LMCACHE_SERVER_CHUNKS = "lmcache server: chunks loaded, L1-to-GPU throughput"
_MP_CHUNKS = "lmcache_mp_num_chunks_loaded"
_MP_L1_GBS = "lmcache_mp_l0_l1_load_throughput_GB_per_second"
_MP_L2_GBS = "lmcache_mp_l2_load_throughput_GB_per_second"
SOURCE_OFFLOAD = {"load": "vllm kv_offload counters: load", "store": "vllm kv_offload counters: store"}


def kv_bytes_per_token(m: RunMeta) -> int | None:
    """From the run (LMCache arms record it), else from the model spec (kvreuse.kvmodel)."""
    bpt = (m.lmcache or {}).get("kv_bytes_per_token")
    return bpt if bpt is not None else kvmodel.model_kv_bytes_per_token(((m.model or {}).get("spec") or {}))


def tensor_parallel(m: RunMeta) -> int:
    """The GPUs the run's vLLM spanned (its --tensor-parallel-size; 1 where it gave none)."""
    args = [str(a) for a in ((m.server or {}).get("vllm_args") or [])]
    for flag in plan.TENSOR_PARALLEL_FLAGS:
        if flag in args[:-1]:
            return int(args[args.index(flag) + 1])
    return 1


def link_bytes_per_token(m: RunMeta, bpt: int | None) -> float | None:
    """The KV bytes of one token that one GPU holds, stores and loads over its own link (in the
    analytic model, and in an LMCache server's chunk counts): all of ``bpt`` on one GPU; with
    tensor parallelism each rank its KV heads' share, in parallel (kvreuse.kvmodel.kv_heads_per_gpu:
    an even split where the ranks divide the heads)."""
    tp = tensor_parallel(m)
    if not bpt or tp == 1:
        return bpt
    arch = kvmodel.model_config(((m.model or {}).get("spec") or {}))
    if arch is None:
        return bpt / tp
    heads = arch.get("num_key_value_heads", arch["num_attention_heads"])
    return bpt * kvmodel.kv_heads_per_gpu(arch, tp) / heads


def lmcache_chunk_bytes(m) -> float | None:
    """Bytes of one LMCache chunk of a run as one GPU holds it (its chunk size x the KV bytes
    per token of one rank: all of the meta's ``lmcache.kv_bytes_per_token`` on one GPU, its KV
    heads' share with tensor parallelism, where each rank stores and loads its own chunks and
    LMCache's server counts them all); None for a run without LMCache or where either is unknown."""
    lm = getattr(m, "lmcache", None) or {}
    chunk, bpt = lm.get("chunk_size"), lm.get("kv_bytes_per_token")
    return float(chunk * link_bytes_per_token(m, bpt)) if chunk and bpt else None


def l2_load_gb_s(phases: list[Phase]) -> float:
    """The LMCache server's mean read throughput from its L2 (a file store) in ``phases``, GB/s,
    from its per-load histogram; nan when nothing was read from an L2."""
    n = sum((ph.counters or {}).get(f"{_MP_L2_GBS}_count", 0.0) for ph in phases)
    total = sum((ph.counters or {}).get(f"{_MP_L2_GBS}_sum", 0.0) for ph in phases)
    return total / n if n else np.nan


def transfers(phases: list[Phase], direction: str = "load",
              chunk_bytes: float | None = None) -> tuple[float, float, str]:
    """Bytes and seconds of the KV loads into the GPU (``direction`` load) or the stores out of
    it (store) in ``phases``, summed, and where they come from: LMCache's per-request log lines
    (in-process), the LMCache server's host-to-device DMA counters (loads only; LMCache 0.5.3's
    server: its chunks loaded x ``chunk_bytes`` at the throughput it reports per load), or
    vLLM's own offloading counters (``vllm:kv_offload_{load,store}_{bytes,time}``); (nan, nan,
    "") when the phases moved nothing by any of them."""
    lm = {"load": ("retrieves", "retrieve_bytes", "retrieve_ms"),
          "store": ("stores", "store_bytes", "store_ms")}[direction]
    logs = [ph.lmcache_log for ph in phases if (ph.lmcache_log or {}).get(lm[0])]
    if logs:
        return (float(sum(lg[lm[1]] for lg in logs)), sum(lg[lm[2]] for lg in logs) / 1000,
                SOURCE_LMCACHE_LOG[direction])
    nbytes = secs = 0.0
    if direction == "load":
        for ph in phases:
            c = ph.counters or {}
            nbytes += sum(v for k, v in c.items() if k.startswith("lmcache_mp_transfer_phase_bytes{")
                          and "direction=h2d" in k and "phase=staging" in k)
            secs += sum(v for k, v in c.items() if k.startswith("lmcache_mp_transfer_phase_elapsed")
                        and "{" in k and "direction=h2d" in k and "phase=staging" in k)
        if nbytes:
            return float(nbytes), float(secs), SOURCE_LMCACHE_SERVER
        if chunk_bytes:
            for ph in phases:  # one phase, one request: its loads' mean GB/s times its bytes
                c = ph.counters or {}
                chunks, n = c.get(_MP_CHUNKS, 0.0), c.get(f"{_MP_L1_GBS}_count", 0.0)
                if chunks and n and c.get(f"{_MP_L1_GBS}_sum", 0.0) > 0:
                    b = chunks * chunk_bytes
                    nbytes += b
                    secs += b / (c[f"{_MP_L1_GBS}_sum"] / n * 1e9)
            if nbytes:
                return float(nbytes), float(secs), SOURCE_LMCACHE_SERVER_CHUNKS
    key_bytes, key_s = OFFLOAD_COUNTERS[direction]
    nbytes = sum((ph.counters or {}).get(key_bytes, 0.0) for ph in phases)
    secs = sum((ph.counters or {}).get(key_s, 0.0) for ph in phases)
    if nbytes:
        return float(nbytes), float(secs), SOURCE_OFFLOAD[direction]
    return np.nan, np.nan, ""
