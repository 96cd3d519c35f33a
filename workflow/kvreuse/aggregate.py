"""Raw records and metas -> tables (CSV, Markdown, LaTeX), with pandas.

Latency statistics use successful requests only; failures are counted (``n_errors``) and an
experiment whose error fraction exceeds ``max_error_fraction`` fails here, loudly, instead of
producing a figure. Cache hits come from the server's counters in the metas. Runs are read
through the results schema (kvreuse.results) and phases are selected by their fields (kind,
prefix length, rate), never by their names.

Given the current config's expected config hashes (kvreuse.dag.table_freshness), each run is
current, stale or archived (kvreuse.freshness): runs.csv lists every run with its freshness,
stale runs are kept out of the comparison tables, which carry a ``freshness`` column, and
accounting.csv says what became of every configured run (kvreuse.accounting).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import alternating, kvmodel, metrics, verdict
from .accounting import JobLogs, accounting_table, load_attempts
from .comparisons import comparisons_table
from .freshness import Freshness, comparable, freshness
from .migrate import read_converted
from .results import Phase, RequestRecord, RunMeta, meta_path, read_meta, read_records
from .stats import bootstrap_ci, tail

log = logging.getLogger(__name__)


class TooManyErrors(RuntimeError):
    pass


RECORD_COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]


def load(jsonl_files: list[str | Path], *, convert_older: bool = False) -> tuple[pd.DataFrame, list[RunMeta]]:
    """Records (one row per request) and metas of runs, validated by the results schema.

    ``convert_older``: files of an older schema version (a pinned artifact, which cannot be
    rewritten) are read through kvreuse.migrate's converter, and each conversion is logged;
    otherwise they fail with the file and field named."""
    records, metas = [], []
    for f in jsonl_files:
        if convert_older:
            meta, recs, changes = read_converted(f)
            if changes:
                log.warning("%s: read through the converter from schema version 1 (%d changes: "
                            "phase kinds and fields from the phase names)", f, len(changes))
        else:
            meta, recs = read_meta(meta_path(f)), read_records(f)
        metas.append(meta)
        records += [dataclasses.asdict(r) for r in recs]
    return pd.DataFrame.from_records(records, columns=RECORD_COLUMNS), metas


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


def check_errors(df: pd.DataFrame, limit: float) -> None:
    if df.empty:
        return
    frac = df.groupby(["platform", "arm"])["error"].apply(lambda e: e.notna().mean())
    bad = frac[frac > limit]
    if len(bad):
        (platform, arm), f = next(iter(bad.items()))
        sample = df[(df.platform == platform) & (df.arm == arm) & df.error.notna()]["error"].iloc[0]
        raise TooManyErrors(
            f"{df['experiment'].iloc[0]} on {platform}/{arm}: {f:.0%} of requests failed "
            f"(max_error_fraction is {limit:.0%}). First error: {sample}. The raw file is kept; "
            f"fix the cause (see results/logs/{platform}/) and rerun that job.")


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


#: the restart table's kinds, in its column order
RESTART_KINDS = ("populate", "warm", "post_restart_first", "post_restart_steady", "post_restart_cold",
                 "cold_reference")


def restart_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """One row per platform and arm: per phase kind, the median over its requests (all
    prefixes) with its CI and summed hit tokens; the verdict (kvreuse.verdict) from each
    populated prefix's first request after the restart; n per kind."""
    long = phase_table(df, metas, ["platform", "arm", "phase"])
    rows = []
    for m in metas:
        row = {"platform": m.platform, "arm": m.arm, "status": m.status, "reason": m.reason or ""}
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
            if m.lmcache:
                row["cuda_kernels"] = m.lmcache.get("cuda_kernels")
            lm = [ph.lmcache_log for ph in m.phases_of("post_restart_first") if ph.lmcache_log]
            if any(x.get("retrieves") for x in lm):  # LMCache's own account of the reloads after the restart
                row["reload_bytes"] = sum(x.get("retrieve_bytes", 0) for x in lm)
                row["reload_ms"] = sum(x.get("retrieve_ms", 0) for x in lm)
                row["reload_gb_s"] = row["reload_bytes"] / row["reload_ms"] / 1e6 if row["reload_ms"] else np.nan
            row.update({k: v for k, v in judged.items() if k != "output_equal"})
            for kind in [k for k in RESTART_KINDS if k in by_kind]:
                row[f"{kind}_n"] = by_kind[kind]["n"]
        rows.append(row)
    return pd.DataFrame(rows)


RELOAD_COLUMNS = ["platform", "arm", "status", "reason", "cuda_kernels", "prefix_tokens",
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
    """Bytes loaded and load seconds of phases (summed): LMCache's retrieve log lines
    (in-process) or the LMCache server's host-to-device DMA counters."""
    logs = [ph.lmcache_log for ph in phases if (ph.lmcache_log or {}).get("retrieves")]
    if logs:
        return (float(sum(lg["retrieve_bytes"] for lg in logs)), sum(lg["retrieve_ms"] for lg in logs) / 1000,
                "lmcache log: retrieve")
    nbytes = secs = 0.0
    for ph in phases:
        c = ph.counters or {}
        nbytes += sum(v for k, v in c.items() if k.startswith("lmcache_mp_transfer_phase_bytes{")
                      and "direction=h2d" in k and "phase=staging" in k)
        secs += sum(v for k, v in c.items() if k.startswith("lmcache_mp_transfer_phase_elapsed")
                    and "{" in k and "direction=h2d" in k and "phase=staging" in k)
    if nbytes:
        return float(nbytes), float(secs), "lmcache server: h2d staging DMA"
    return np.nan, np.nan, ""


def _kv_bytes_per_token(m: RunMeta) -> int | None:
    """From the run (LMCache arms record it), else from the model spec's config.json."""
    bpt = (m.lmcache or {}).get("kv_bytes_per_token")
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
    """Per LMCache arm and prefix length: the reloads after a restart (median TTFT over the
    length's samples; bytes, load time and hits summed over them; GB/s of the sums) beside
    recomputing, and the analytic load time bytes / link bandwidth per link.

    APC-only sweeps add rows with their measured cold prefill beside the analytic load time
    (arm = that arm, no reload), so the model is drawn wherever a platform has links."""
    links_gb_s = links_gb_s or {}
    apc = {}
    for m in metas:
        if m.status == "ok" and (m.arm_config or {}).get("lmcache") is None:
            for n in _by_length(m, "cold"):
                apc.setdefault((m.platform, n), _ttft_median(df, m.platform, m.arm, "cold", n))
    rows = []
    for m in metas:
        if (m.arm_config or {}).get("lmcache") is None:
            continue
        base = {"platform": m.platform, "arm": m.arm, "status": m.status,
                "reason": m.reason or "", "cuda_kernels": (m.lmcache or {}).get("cuda_kernels")}
        reloads = _by_length(m, "reload")
        if m.status != "ok" or not reloads:
            rows.append(base)
            continue
        bpt = (m.lmcache or {}).get("kv_bytes_per_token")
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
        if m.status != "ok" or (m.arm_config or {}).get("lmcache") is not None or not links:
            continue
        bpt = _kv_bytes_per_token(m)
        for n, phases in _by_length(m, "cold").items():
            row = {"platform": m.platform, "arm": m.arm, "status": m.status, "reason": "",
                   "prefix_tokens": n, "kv_bytes_per_token": bpt,
                   "kv_bytes_model": n * bpt if bpt else np.nan,
                   "recompute_prefill_ms": _prefill_ms(phases),
                   "cold_ttft_ms": _ttft_median(df, m.platform, m.arm, "cold", n),
                   "apc_cold_ttft_ms": apc.get((m.platform, n), np.nan)}
            for link, gb_s in links.items():
                rows.append({**row, "link": link, "link_gb_s": gb_s,
                             "model_load_ms": 1000 * kvmodel.load_time_s(n, bpt, gb_s) if bpt else np.nan})
    return pd.DataFrame(rows, columns=RELOAD_COLUMNS)


def _vllm_starts(m: RunMeta) -> list[float]:
    return [s["startup_s"] for s in m.server_starts if s["process"] == "vllm"]


def runs_table(metas: list[RunMeta], fresh: list[Freshness] | None = None) -> pd.DataFrame:
    """Every run and its provenance; with ``fresh``, whether it answers the current config
    (``freshness``: current | stale | archived, the expected hash beside the recorded one)."""
    rows = []
    for i, m in enumerate(metas):
        acc, v, model = m.accelerator or {}, m.versions or {}, m.model or {}
        starts = _vllm_starts(m)
        rows.append({"platform": m.platform, "experiment": m.experiment, "arm": m.arm,
                     "status": m.status, "reason": m.reason or "",
                     "accelerator": acc.get("name"), "driver": acc.get("driver"),
                     "vllm": v.get("vllm"), "lmcache": v.get("lmcache"), "torch": v.get("torch"),
                     "lmcache_kernels": (m.lmcache or {}).get("cuda_kernels"),
                     "model": model.get("name"), "weights": model.get("weights"),
                     "n_requests": m.n_requests, "n_errors": m.n_errors,
                     "server_starts": len(starts),
                     "first_start_s": starts[0] if starts else np.nan,
                     "later_start_s": float(np.median(starts[1:])) if len(starts) > 1 else np.nan,
                     "config_hash": m.config_hash, "git_commit": m.git_commit})
        if fresh is not None:
            rows[-1].update(freshness=fresh[i].freshness,
                            expected_config_hash=fresh[i].expected_config_hash,
                            archived_note=fresh[i].archived_note)
    return pd.DataFrame(rows)


def comparable_runs(df: pd.DataFrame, metas: list[RunMeta], fresh: list[Freshness]):
    """The records, metas and freshness of the runs that enter a comparison table (not stale)."""
    keep = [i for i, f in enumerate(fresh) if comparable(f)]
    for i, f in enumerate(fresh):
        if i not in keep:
            m = metas[i]
            log.warning("%s/%s/%s is stale (config hash %s, the current config gives %s): kept "
                        "out of the table; rerun it, or name it under `archived` in config.yaml",
                        m.platform, m.experiment, m.arm, m.config_hash,
                        f.expected_config_hash or "none: not configured")
    kept = {(metas[i].platform, metas[i].experiment, metas[i].arm) for i in keep}
    if len(df):
        df = df[[k in kept for k in zip(df.platform, df.experiment, df.arm)]]
    return df, [metas[i] for i in keep], [fresh[i] for i in keep]


def mark_freshness(table: pd.DataFrame, metas: list[RunMeta], fresh: list[Freshness]) -> pd.DataFrame:
    """A ``freshness`` column (current | archived) on a comparison table's measured rows."""
    if table.empty or "platform" not in table.columns:
        return table
    keys = [k for k in ("platform", "experiment", "arm") if k in table.columns]
    marks = pd.DataFrame([{"platform": m.platform, "experiment": m.experiment, "arm": m.arm,
                           "freshness": f.freshness} for m, f in zip(metas, fresh)],
                         columns=["platform", "experiment", "arm", "freshness"])
    marks = marks[keys + ["freshness"]].drop_duplicates(keys)
    return table.merge(marks, on=keys, how="left").fillna({"freshness": ""})


def serving_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """Per platform and request rate: vLLM bench serve's own summary, with our CI of the TTFT median."""
    stats = phase_table(df[df["phase_kind"] == "rate"], metas, ["platform", "arm", "phase"], by="name")
    rows = []
    for m in metas:
        for phase, ph in m.phases.items():
            b = ph.bench_summary
            if b and ph.kind == "rate":
                rows.append({"platform": m.platform, "arm": m.arm, "phase": phase,
                             "request_rate": ph.request_rate,
                             "bench_median_ttft_ms": b.get("median_ttft_ms"),
                             "bench_p99_ttft_ms": b.get("p99_ttft_ms"),
                             "bench_median_itl_ms": b.get("median_itl_ms"),
                             "bench_median_tpot_ms": b.get("median_tpot_ms"),
                             "output_throughput_tok_s": b.get("output_throughput"),
                             "request_throughput_req_s": b.get("request_throughput"),
                             "completed": b.get("completed"), "failed": b.get("failed", 0)})
    bench = pd.DataFrame(rows)
    if bench.empty:
        return bench
    keep = ["platform", "arm", "phase", "ttft_ci95_lo_ms", "ttft_ci95_hi_ms", "itl_median_ms"]
    return bench.merge(stats[keep] if len(stats) else pd.DataFrame(columns=keep), on=["platform", "arm", "phase"], how="left")


def fidelity_table(df: pd.DataFrame, metas: list[RunMeta]) -> pd.DataFrame:
    """One workload, three TTFTs: our client, vllm bench serve, the server's own histogram."""
    rows = []
    for m in metas:
        client_ph, bench_ph = m.phases_of("fidelity_client"), m.phases_of("fidelity_bench")
        if not client_ph or not bench_ph:
            continue
        sub = df[(df.platform == m.platform) & (df.arm == m.arm) & (df.phase_kind == "fidelity_client")]
        client = sub[sub.error.isna()]["ttft_ms"].astype(float)
        c = client_ph[0].counters
        n = c.get("vllm:time_to_first_token_seconds_count", 0)
        server_median = metrics.histogram_quantile(c, "vllm:time_to_first_token_seconds", 0.5)
        bench = bench_ph[0].bench_summary or {}
        row = {"platform": m.platform, "n": len(client),
               "client_median_ttft_ms": client.median(),
               "bench_median_ttft_ms": bench.get("median_ttft_ms"),
               "server_hist_median_ttft_ms": server_median * 1000 if server_median is not None else np.nan,
               "server_mean_ttft_ms": 1000 * c.get("vllm:time_to_first_token_seconds_sum", 0) / n if n else np.nan,
               "client_mean_ttft_ms": client.mean()}
        row["client_minus_server_mean_ms"] = row["client_mean_ttft_ms"] - row["server_mean_ttft_ms"]
        row["client_minus_server_median_ms"] = row["client_median_ttft_ms"] - row["server_hist_median_ttft_ms"]
        row["client_minus_bench_median_ms"] = row["client_median_ttft_ms"] - row["bench_median_ttft_ms"]
        rows.append(row)
    return pd.DataFrame(rows)


def random_overhead_table(df: pd.DataFrame, metas: list[RunMeta], reference: str = "apc") -> pd.DataFrame:
    """Per platform and arm: mean and median TTFT and e2e over the unique prompts, the number
    of separate server runs (``server_runs``), and the change of the mean against the APC-only
    arm on the very same prompts, with a 95% CI that resamples server runs within each arm and
    then prompts, paired (kvreuse.alternating.ratio_ci): NaN with fewer than two server runs
    on either side (runs made before the alternating design had one)."""
    df = df[(df["phase_kind"] == "repeat") & df["error"].isna()]
    rows = []
    for m in metas:
        p, arm = m.platform, m.arm
        row = {"platform": p, "arm": arm, "status": m.status, "reason": m.reason or ""}
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
        rows.append(row)
    return pd.DataFrame(rows)


def _busy_s(m: RunMeta) -> float:
    """Seconds a run kept its servers busy: their starts and its phases."""
    return sum(s.get("startup_s", 0.0) for s in m.server_starts) + sum(p.wall_s for p in m.phases.values())


def _wall_s(m: RunMeta, metas: list[RunMeta], benchmarks: dict[tuple, float]) -> float:
    """The run's own job's wall time; for the arms of one alternating job (its benchmark file
    results/benchmarks/<platform>/<experiment>/alternating.tsv), the job's wall time shared
    among the arms that ran in proportion to their busy seconds."""
    own = benchmarks.get((m.platform, m.experiment, m.arm))
    if own is not None:
        return own
    job = benchmarks.get((m.platform, m.experiment, alternating.JOB))
    if job is None:
        return np.nan
    busy = [_busy_s(o) for o in metas
            if (o.platform, o.experiment, o.status) == (m.platform, m.experiment, "ok")]
    return job * _busy_s(m) / sum(busy) if sum(busy) > 0 else job / max(len(busy), 1)


def cost_table(metas: list[RunMeta], benchmarks: dict[tuple, float]) -> pd.DataFrame:
    """GPU-minutes (Snakemake benchmark wall time x GPUs) and server starts per run."""
    rows = []
    for m in metas:
        if m.status != "ok":
            continue
        starts = _vllm_starts(m)
        wall = _wall_s(m, metas, benchmarks)
        acc = m.accelerator or {}
        gpus = acc.get("count", 1) if acc.get("kind") == "gpu" else 0
        rows.append({"platform": m.platform, "experiment": m.experiment, "arm": m.arm,
                     "wall_s": wall, "gpu_minutes": wall * gpus / 60 if gpus else 0.0,
                     "server_starts": len(starts), "startup_s_total": sum(starts),
                     "first_start_s": starts[0] if starts else np.nan,
                     "later_start_s": float(np.median(starts[1:])) if len(starts) > 1 else np.nan,
                     "requests": m.n_requests})
    t = pd.DataFrame(rows)
    if len(t):
        tot = t.groupby("platform", sort=False)[["wall_s", "gpu_minutes", "server_starts", "startup_s_total", "requests"]].sum().reset_index()
        tot["experiment"], tot["arm"] = "TOTAL", ""
        t = pd.concat([t, tot], ignore_index=True)
    return t


def read_benchmarks(files: list[str]) -> dict[tuple, float]:
    """results/benchmarks/<platform>/<experiment>/<arm>.tsv -> wall seconds."""
    out = {}
    for f in files:
        p = Path(f)
        out[(p.parent.parent.name, p.parent.name, p.stem)] = float(pd.read_csv(f, sep="\t")["s"].iloc[0])
    return out


def build(experiment: str, jsonl_files: list[str], max_error_fraction: float,
          benchmark_files: list[str] = (),
          links_gb_s: dict | None = None, convert_older: bool = False,
          expected_hashes: dict[str, str] | None = None, archived: list[dict] | None = None,
          context_files: list[str] = ()) -> pd.DataFrame:
    """``expected_hashes`` (kvreuse.freshness.run_key -> the current config's hash) and
    ``archived`` (config.yaml's section): stale runs are kept out of the comparison tables;
    None: every run is taken as it is (freshness ``unchecked``). ``context_files``: the
    accounting's attempts.yaml files and committed log archives (results/gpu-logs/*.tgz)."""
    df, metas = load(jsonl_files, convert_older=convert_older)
    fresh = [freshness(m, expected_hashes, archived) for m in metas]
    if experiment == "runs":
        return runs_table(metas, fresh if expected_hashes is not None else None)
    if experiment == "accounting":
        return accounting_table(
            metas, fresh, expected_hashes or {},
            attempts=load_attempts([f for f in context_files if str(f).endswith(".yaml")]),
            logs=JobLogs(archives=[f for f in context_files if str(f).endswith(".tgz")]))
    if experiment == "cost":
        return cost_table(metas, read_benchmarks(list(benchmark_files)))
    df, metas, fresh = comparable_runs(df, metas, fresh)
    table = _comparison_table(experiment, df, metas, max_error_fraction, links_gb_s)
    return mark_freshness(table, metas, fresh) if expected_hashes is not None else table


def _comparison_table(experiment: str, df: pd.DataFrame, metas: list[RunMeta],
                      max_error_fraction: float, links_gb_s: dict | None) -> pd.DataFrame:
    for (platform, arm), g in df.groupby(["platform", "arm"]) if len(df) else []:
        check_errors(g, max_error_fraction)
    if experiment == "reload_vs_recompute":
        return reload_vs_recompute_table(df, metas, links_gb_s)
    if experiment == "restart":
        return restart_table(df, metas)
    if experiment == "serving":
        return serving_table(df, metas)
    if experiment == "fidelity":
        return fidelity_table(df, metas)
    if experiment == "random_overhead":
        return random_overhead_table(df, metas)
    if experiment == "comparisons":
        return comparisons_table(df, metas)
    if experiment == "prefix_sweep":  # per length and kind: all its samples in one row
        return phase_table(df.assign(kind=df["phase_kind"]), metas, ["platform", "arm", "prefix_tokens", "kind"])
    if experiment == "multiturn":
        return phase_table(df, metas, ["platform", "arm", "turn", "context_tokens", "phase"], by="name")
    return phase_table(df, metas, ["platform", "arm", "phase"])  # the phase column: the kind


def write(table: pd.DataFrame, csv: str | Path, md: str | Path, tex: str | Path) -> None:
    table.to_csv(csv, index=False)
    rounded = table.round(2)
    Path(md).write_text(rounded.to_markdown(index=False) + "\n" if len(rounded) else "(no rows)\n")
    Path(tex).write_text(rounded.to_latex(index=False, na_rep="--", float_format="%.2f"))
