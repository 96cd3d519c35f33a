"""The serving tables: ``serving_table`` (vLLM bench serve's summary per request rate, with
our CI) and ``fidelity_table`` (one workload, three TTFTs: client, bench, server histogram)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics
from .phase_stats import phase_table
from .results import RunMeta


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
