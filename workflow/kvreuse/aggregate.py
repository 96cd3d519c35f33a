"""Raw records and metas -> tables (CSV, Markdown, LaTeX), with pandas.

Latency statistics use successful requests only; failures are counted (``n_errors``) and an
experiment whose error fraction exceeds ``max_error_fraction`` fails here, loudly, instead of
producing a figure. Cache hits come from the server's counters in the metas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .results_io import meta_path, read_meta, read_records

CI_RESAMPLES = 2000


class TooManyErrors(RuntimeError):
    pass


def load(jsonl_files: list[str | Path]) -> tuple[pd.DataFrame, list[dict]]:
    records, metas = [], []
    for f in jsonl_files:
        meta = read_meta(meta_path(f))
        metas.append(meta)
        for r in read_records(f):
            r.setdefault("platform", meta["platform"])
            records.append(r)
    df = pd.DataFrame.from_records(records)
    if df.empty:
        df = pd.DataFrame(columns=["platform", "experiment", "arm", "phase", "seq", "ttft_ms",
                                   "e2e_ms", "itl_ms", "error", "prompt_tokens", "cached_tokens"])
    return df, metas


def bootstrap_ci(values, stat=np.median, n: int = CI_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of ``stat``; NaN for fewer than two values."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    stats = stat(rng.choice(v, size=(n, len(v)), replace=True), axis=1)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def latency_stats(g: pd.DataFrame) -> pd.Series:
    ok = g[g["error"].isna()]
    ttft = ok["ttft_ms"].astype(float)
    lo, hi = bootstrap_ci(ttft)
    itl = [x for xs in ok["itl_ms"] for x in (xs or [])]
    return pd.Series({
        "n": len(ok), "n_errors": int(g["error"].notna().sum()),
        "ttft_median_ms": ttft.median(), "ttft_p99_ms": ttft.quantile(0.99) if len(ttft) else np.nan,
        "ttft_mean_ms": ttft.mean(), "ttft_ci95_lo_ms": lo, "ttft_ci95_hi_ms": hi,
        "e2e_median_ms": ok["e2e_ms"].astype(float).median(),
        "itl_median_ms": float(np.median(itl)) if itl else np.nan,
        "prompt_tokens": ok["prompt_tokens"].median() if "prompt_tokens" in ok else np.nan,
        "cached_tokens": ok["cached_tokens"].median() if "cached_tokens" in ok else np.nan,
    })


def counter_rows(metas: list[dict]) -> pd.DataFrame:
    rows = []
    for m in metas:
        for phase, ph in (m.get("phases") or {}).items():
            c = ph["counters"]
            q = c.get("vllm:prefix_cache_queries", 0.0) + c.get("vllm:external_prefix_cache_queries", 0.0)
            rows.append({"platform": m["platform"], "arm": m["arm"], "phase": phase,
                         "hit_tokens": metrics.hit_tokens(c),
                         "prefix_cache_hits": c.get("vllm:prefix_cache_hits", 0.0),
                         "external_prefix_cache_hits": c.get("vllm:external_prefix_cache_hits", 0.0),
                         "query_tokens": c.get("vllm:prefix_cache_queries", 0.0),
                         "hit_rate": (c.get("vllm:prefix_cache_hits", 0.0) / c["vllm:prefix_cache_queries"])
                         if c.get("vllm:prefix_cache_queries") else np.nan})
    return pd.DataFrame(rows, columns=["platform", "arm", "phase", "hit_tokens", "prefix_cache_hits",
                                       "external_prefix_cache_hits", "query_tokens", "hit_rate"])


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


def phase_table(df: pd.DataFrame, metas: list[dict], keys: list[str]) -> pd.DataFrame:
    df = df[df["phase"] != "warmup"]
    if df.empty:
        return pd.DataFrame(columns=keys + ["n"])
    stats = df.groupby(keys, sort=False).apply(latency_stats, include_groups=False).reset_index()
    if "phase" in keys:
        stats = stats.merge(counter_rows(metas), on=["platform", "arm", "phase"], how="left")
    return stats


def restart_table(df: pd.DataFrame, metas: list[dict]) -> pd.DataFrame:
    """One row per platform and arm: medians per phase, hit tokens after restart, verdicts."""
    long = phase_table(df, metas, ["platform", "arm", "phase"])
    rows = []
    for m in metas:
        row = {"platform": m["platform"], "arm": m["arm"], "status": m["status"],
               "reason": m.get("reason", "")}
        sub = long[(long.platform == m["platform"]) & (long.arm == m["arm"])] if len(long) else long
        for _, r in sub.iterrows():
            row[f"{r['phase']}_ttft_median_ms"] = r["ttft_median_ms"]
            row[f"{r['phase']}_e2e_median_ms"] = r["e2e_median_ms"]
            row[f"{r['phase']}_ttft_ci95_lo_ms"] = r["ttft_ci95_lo_ms"]
            row[f"{r['phase']}_ttft_ci95_hi_ms"] = r["ttft_ci95_hi_ms"]
            row[f"{r['phase']}_hit_tokens"] = r["hit_tokens"]
        if m["status"] == "ok":
            row["persisted"] = bool(m.get("persisted"))
            row["output_equal"] = bool(m.get("output_equal"))
        rows.append(row)
    return pd.DataFrame(rows)


def runs_table(metas: list[dict]) -> pd.DataFrame:
    rows = []
    for m in metas:
        acc, v, model = m.get("accelerator") or {}, m.get("versions") or {}, m.get("model") or {}
        starts = [s["startup_s"] for s in m.get("server_starts", []) if s["process"] == "vllm"]
        rows.append({"platform": m["platform"], "experiment": m["experiment"], "arm": m["arm"],
                     "status": m["status"], "reason": m.get("reason", ""),
                     "accelerator": acc.get("name"), "driver": acc.get("driver"),
                     "vllm": v.get("vllm"), "lmcache": v.get("lmcache"), "torch": v.get("torch"),
                     "model": model.get("name"), "weights": model.get("weights"),
                     "n_requests": m.get("n_requests", 0), "n_errors": m.get("n_errors", 0),
                     "server_starts": len(starts),
                     "first_start_s": starts[0] if starts else np.nan,
                     "later_start_s": float(np.median(starts[1:])) if len(starts) > 1 else np.nan,
                     "config_hash": m.get("config_hash"), "git_commit": m.get("git_commit")})
    return pd.DataFrame(rows)


def build(experiment: str, jsonl_files: list[str], max_error_fraction: float) -> pd.DataFrame:
    df, metas = load(jsonl_files)
    if experiment == "runs":
        return runs_table(metas)
    for (platform, arm), g in df.groupby(["platform", "arm"]) if len(df) else []:
        check_errors(g, max_error_fraction)
    if experiment == "restart":
        return restart_table(df, metas)
    if experiment == "prefix_sweep":
        df = df.assign(kind=df["phase"].str.split("_").str[0])
        t = phase_table(df, metas, ["platform", "arm", "prefix_tokens", "kind", "phase"])
        return t.drop(columns=["phase"]) if "phase" in t else t
    if experiment == "multiturn":
        return phase_table(df, metas, ["platform", "arm", "turn", "context_tokens", "phase"])
    return phase_table(df, metas, ["platform", "arm", "phase"])


def write(table: pd.DataFrame, csv: str | Path, md: str | Path, tex: str | Path) -> None:
    table.to_csv(csv, index=False)
    rounded = table.round(2)
    Path(md).write_text(rounded.to_markdown(index=False) + "\n" if len(rounded) else "(no rows)\n")
    Path(tex).write_text(rounded.to_latex(index=False, na_rep="--", float_format="%.2f"))
