"""What a reader sees for a column: its header and its unit, one mapping for every table.

The write-up's tables (Markdown and LaTeX) name their columns by the tables' column names
(``ttft_median_ms``); the header shown is ``label(name)``, e.g. "TTFT median (ms)".
A *range* column (``ttft_ci95_ms``) is made of two columns, low and high, shown as one.
"""

from __future__ import annotations

# column -> (header, unit or None)
COLUMNS: dict[str, tuple[str, str | None]] = {
    # who, what, how many
    "platform": ("Platform", None),
    "gpu": ("GPU", None),
    "experiment": ("Experiment", None),
    "arm": ("Arm", None),
    "phase": ("Phase", None),
    "kind": ("Kind", None),
    "status": ("Status", None),
    "provenance": ("Source", None),
    "accelerator": ("Accelerator", None),
    "driver": ("Driver", None),
    "vllm": ("vLLM", None),
    "lmcache": ("LMCache", None),
    "torch": ("torch", None),
    "model": ("Model", None),
    "weights": ("Weights", None),
    "n_runs": ("Runs", None),
    "server_runs": ("Runs", None),  # server runs per arm (the tables' captions say so)
    "n": ("Requests", None),
    "n_errors": ("Errors", None),
    "requests": ("Requests", None),
    "completed": ("Completed", None),
    "failed": ("Failed", None),
    "turn": ("Turn", None),
    # sizes
    "prompt_tokens": ("Prompt", "tokens"),
    "prefix_tokens": ("Prefix", "tokens"),
    "context_tokens": ("Context", "tokens"),
    "hit_tokens": ("Cache hits", "tokens"),
    "query_tokens": ("Queried", "tokens"),
    "hit_rate": ("Hit rate", None),
    # latency of our client
    "ttft_median_ms": ("TTFT median", "ms"),
    "ttft_mean_ms": ("TTFT mean", "ms"),
    "ttft_p99_ms": ("TTFT p99", "ms"),            # NaN below 100 requests (kvreuse.stats.tail)
    "ttft_max_ms": ("TTFT max", "ms"),
    "ttft_ci95_lo_ms": ("TTFT 95% CI low", "ms"),
    "ttft_ci95_hi_ms": ("TTFT 95% CI high", "ms"),
    "ttft_ci95_ms": ("TTFT 95% CI", "ms"),
    "e2e_median_ms": ("E2E median", "ms"),
    "e2e_mean_ms": ("E2E mean", "ms"),
    "itl_median_ms": ("ITL median", "ms"),
    # vllm bench serve
    "request_rate": ("Request rate", "req/s"),
    "bench_median_ttft_ms": ("Bench TTFT median", "ms"),
    "bench_median_itl_ms": ("Bench ITL median", "ms"),
    "output_throughput_tok_s": ("Output", "tok/s"),
    # restart
    "populate_ttft_median_ms": ("Populate TTFT", "ms"),
    "warm_ttft_median_ms": ("Warm TTFT", "ms"),
    "post_restart_first_ttft_median_ms": ("First after restart", "ms"),
    "post_restart_first_hit_tokens": ("First after restart hits", "tokens"),
    "post_restart_cold_ttft_median_ms": ("New prompt after restart", "ms"),
    "post_restart_steady_ttft_median_ms": ("Steady after restart", "ms"),
    "persisted": ("Persisted", None),
    "verdict": ("Verdict", None),
    "verdict_reason": ("Why", None),
    "hit_fraction": ("Reused fraction, median", None),
    "hit_fraction_min": ("Reused fraction, min", None),
    "hit_fraction_max": ("Reused fraction, max", None),
    "reusable_tokens": ("Reusable", "tokens"),
    "n_prefixes": ("Prefixes", None),
    "n_prefixes_persisted": ("Prefixes persisted", None),
    "output_equal": ("Same output", None),
    "store_files": ("Store files", None),
    "store_bytes": ("Store", "bytes"),
    "reload_bytes": ("Reloaded", "bytes"),
    "reload_ms": ("Reload", "ms"),
    "reload_gb_s": ("Reload rate", "GB/s"),
    "cuda_kernels": ("LMCache kernels", None),
    "lmcache_kernels": ("LMCache kernels", None),  # kvreuse.kernels: loaded, fallback, ...
    "arm_label": ("Arm", None),                    # the arm, marked where LMCache fell back
    "connector": ("Connector", None),              # lmcache, vllm_offload or none (APC)
    "reload_source": ("Reload measured by", None),
    "reload_lookup_wait_ms": ("Lookup wait", "ms"),  # vLLM offloading: file-tier lookups
    "loaded_bytes": ("Loaded", "bytes"),
    "load_ms": ("Load", "ms"),
    "stored_bytes": ("Stored", "bytes"),
    "store_ms": ("Store", "ms"),
    "transfer_source": ("Measured by", None),
    "lmcache_server_gpu_mib_before_stop": ("LMCache server GPU before vLLM stop", "MiB"),
    "lmcache_server_gpu_mib_after_stop": ("LMCache server GPU after vLLM stop", "MiB"),
    "reload_bytes_per_hit_token": ("Reloaded per hit token", "bytes"),
    "load_source": ("Load counted by", None),
    "latency_prefix_tokens": ("Latency at prefix", "tokens"),
    "n_lengths": ("Prefix lengths", None),
    # reload vs recompute after a restart, per prefix length (kvreuse.tables_reload)
    "store": ("Store", None),
    "n_reload": ("Reloads", None),
    "n_recompute": ("Recomputes", None),
    "reload_ttft_ms": ("Reload TTFT median", "ms"),
    "recompute_ttft_ms": ("Recompute TTFT median", "ms"),
    "reload_minus_recompute_ms": ("Reload minus recompute", "ms"),
    "reload_minus_recompute_ci95_lo_ms": ("Reload minus recompute 95% CI low", "ms"),
    "reload_minus_recompute_ci95_hi_ms": ("Reload minus recompute 95% CI high", "ms"),
    "reload_minus_recompute_ci95_ms": ("Reload minus recompute 95% CI", "ms"),
    "reload_hit_tokens": ("Reload hits", "tokens"),
    "achieved_gb_s": ("Achieved", "GB/s"),
    "l2_load_gb_s": ("LMCache server L2 read", "GB/s"),
    "link_gb_s": ("Link nominal", "GB/s"),
    "model_load_ms": ("Model load time", "ms"),
    # the break-even prefix length (kvreuse.breakeven)
    "estimate": ("Estimate", None),
    "link": ("Link", None),
    "model_overhead_ms": ("Model fixed overhead", "ms"),
    "break_even_tokens": ("Break-even", "tokens"),
    "ci_low": ("95% CI low", "tokens"),
    "ci_high": ("95% CI high", "tokens"),
    "break_even_ci95": ("Break-even 95% CI", "tokens"),
    "n_per_length": ("Reloads/recomputes per length", None),
    # cross_instance: instance B's first request on A's prefix against a never-seen one
    "instance_a_stopped": ("A stopped", None),
    "n_cross_first": ("First on A's prefix n", None),
    "n_cross_cold": ("Never-seen n", None),
    "cross_first_ttft_median_ms": ("First on A's prefix", "ms"),
    "cross_first_ttft_ci95_lo_ms": ("First on A's prefix 95% CI low", "ms"),
    "cross_first_ttft_ci95_hi_ms": ("First on A's prefix 95% CI high", "ms"),
    "cross_first_ttft_ci95_ms": ("First on A's prefix 95% CI", "ms"),
    "cross_cold_ttft_median_ms": ("Never-seen on B", "ms"),
    "cross_cold_ttft_ci95_lo_ms": ("Never-seen on B 95% CI low", "ms"),
    "cross_cold_ttft_ci95_hi_ms": ("Never-seen on B 95% CI high", "ms"),
    "cross_cold_ttft_ci95_ms": ("Never-seen on B 95% CI", "ms"),
    "lmcache_hit_tokens": ("LMCache lookup hits", "tokens"),
    "cross_cold_hit_tokens": ("Never-seen hits", "tokens"),
    # remote: after vLLM's restart, a populated prompt (from the remote store) against a never-seen one
    "store": ("Store", None),
    "store_version": ("Store version", None),
    "n_hit": ("Hit n", None),
    "n_miss": ("Miss n", None),
    "hit_ttft_median_ms": ("Cache hit", "ms"),
    "hit_ttft_ci95_lo_ms": ("Cache hit 95% CI low", "ms"),
    "hit_ttft_ci95_hi_ms": ("Cache hit 95% CI high", "ms"),
    "hit_ttft_ci95_ms": ("Cache hit 95% CI", "ms"),
    "miss_ttft_median_ms": ("Cache miss", "ms"),
    "miss_ttft_ci95_lo_ms": ("Cache miss 95% CI low", "ms"),
    "miss_ttft_ci95_hi_ms": ("Cache miss 95% CI high", "ms"),
    "miss_ttft_ci95_ms": ("Cache miss 95% CI", "ms"),
    "miss_hit_tokens": ("Misses' hits", "tokens"),
    # comparisons: baseline (e.g. cold) against treatment (e.g. warm)
    "baseline": ("Baseline", None),
    "treatment": ("Against", None),
    "n_baseline": ("Baseline n", None),
    "n_treatment": ("n", None),
    "paired": ("Paired", None),
    "baseline_median_ms": ("Baseline TTFT median", "ms"),
    "treatment_median_ms": ("TTFT median", "ms"),
    "diff_median_ms": ("Saved (difference of medians)", "ms"),
    "diff_ci95_lo_ms": ("Saved 95% CI low", "ms"),
    "diff_ci95_hi_ms": ("Saved 95% CI high", "ms"),
    "diff_ci95_ms": ("Saved 95% CI", "ms"),
    "speedup": ("Speedup", "x"),
    "speedup_ci95_lo": ("Speedup 95% CI low", "x"),
    "speedup_ci95_hi": ("Speedup 95% CI high", "x"),
    "speedup_ci95": ("Speedup 95% CI", "x"),
    # random prompts: LMCache against APC only
    "ttft_delta_pct": ("TTFT change", "%"),
    "ttft_delta_ci95_lo_pct": ("TTFT change 95% CI low", "%"),
    "ttft_delta_ci95_hi_pct": ("TTFT change 95% CI high", "%"),
    "ttft_delta_ci95_pct": ("TTFT change 95% CI", "%"),
    "e2e_delta_pct": ("E2E change", "%"),
    "e2e_delta_ci95_lo_pct": ("E2E change 95% CI low", "%"),
    "e2e_delta_ci95_hi_pct": ("E2E change 95% CI high", "%"),
    "e2e_delta_ci95_pct": ("E2E change 95% CI", "%"),
    # KV pressure (pressure.csv) and cache-miss overhead (miss.csv)
    "workload": ("Workload", None),
    "case": ("Case", None),
    "itl_mean_ms": ("ITL mean", "ms"),
    "itl_p99_ms": ("ITL p99", "ms"),
    "request_throughput_req_s": ("Requests", "req/s"),
    "output_throughput_tok_s": ("Output", "tok/s"),
    "total_throughput_tok_s": ("Total", "tok/s"),
    "apc_hit_tokens": ("APC hits", "tokens"),
    "store_hit_tokens": ("Store hits", "tokens"),
    "no_eviction_hit_tokens": ("Hits without eviction", "tokens"),
    "apc_hit_fraction": ("APC hits / without eviction", None),
    "evicting": ("Evicting", None),
    "ttft_saved_median_ms": ("TTFT saved (median)", "ms"),
    "ttft_saved_ci95_ms": ("TTFT saved 95% CI", "ms"),
    "itl_added_median_ms": ("ITL added (median)", "ms"),
    "itl_added_ci95_ms": ("ITL added 95% CI", "ms"),
    "request_throughput_change_pct": ("Requests change", "%"),
    "output_throughput_change_pct": ("Output change", "%"),
    "hit_fraction": ("Hits / prompt", None),
    # fidelity
    "client_median_ttft_ms": ("Client TTFT median", "ms"),
    "server_hist_median_ttft_ms": ("Server histogram TTFT median", "ms"),
    "client_mean_ttft_ms": ("Client TTFT mean", "ms"),
    "server_mean_ttft_ms": ("Server TTFT mean", "ms"),
    "client_minus_server_mean_ms": ("Client minus server, mean", "ms"),
    "client_minus_bench_median_ms": ("Client minus bench, median", "ms"),
    # cost
    "wall_s": ("Wall time", "s"),
    "gpu_minutes": ("GPU time", "min"),
    "gpu_minutes_held": ("GPU held", "min"),
    "server_starts": ("Server starts", None),
    "first_start_s": ("First start", "s"),
    "later_start_s": ("Later starts", "s"),
    # the source studies' tables (workflow/resources/cited.yaml)
    "output_tok_s": ("Output", "tok/s"),
    "apc_ms": ("APC only", "ms"),
    "apc_lmcache_ms": ("APC + LMCache", "ms"),
    "delta_pct": ("Change", "%"),
    # the claims table (kvreuse.claims)
    "id": ("Claim", None),
    "source": ("Study", None),
    "quantity": ("Quantity", None),
    "claimed_text": ("Claimed", None),
    "ours_text": ("Ours", None),
    "ratio_text": ("Ours / claimed", None),
    "verdict": ("Verdict", None),
    "reason": ("Why / note", None),
    "title": ("Claims of", None),
    "total": ("Claims", None),
    "reproduced": ("Reproduced", None),
    "differs": ("Differs", None),
    "refuted": ("Refuted", None),
    "not resolved": ("Not resolved", None),
    "not measurable": ("Not measurable", None),
    "not measured": ("Not measured", None),
    # the decision table (kvreuse.decision)
    "workload": ("Workload", None),
    "metric_label": ("Metric", None),
    "compared": ("Compared", None),
    "unit": ("Unit", None),
    "difference": ("Reuse minus none", None),
    "difference_ci95": ("95% CI", None),
    "difference_ci95_lo": ("95% CI low", None),
    "difference_ci95_hi": ("95% CI high", None),
    "persistence": ("Counters after restart", None),
    "break_even_status": ("Break-even", None),
    "helps": ("Helps", None),
    "hurts": ("Hurts", None),
    "no difference": ("No difference", None),
    "no CI": ("No CI", None),
    "rows": ("Rows", None),
    "what": ("What", None),
    "study_claim": ("Claim", None),
    "study_text": ("Study", None),
    "ours_text_decision": ("Ours", None),
    "what_differs": ("What differs", None),
    "prefix_text": ("Prefix (tokens)", None),
    "metric_text": ("Metric", None),
    "difference_text": ("Reuse minus none", None),
    "ci_text": ("95% CI", None),
    "persistence_text": ("Counters after restart", None),
    "break_even_text": ("Break-even", None),
}

# concurrent long conversations (kvreuse.tables_conversations): an arm against its reference
COLUMNS.update({
    "chunk_size": ("Chunk", "tokens"),
    "history_tokens": ("History", "tokens"),
    "prompt_tokens_mean": ("Prompt mean", "tokens"),
    "tpot_median_ms": ("TPOT median", "ms"),
    "ttft_saved_ms": ("TTFT saved", "ms"),
    "ttft_saved_ci95_lo_ms": ("TTFT saved 95% CI low", "ms"),
    "ttft_saved_ci95_hi_ms": ("TTFT saved 95% CI high", "ms"),
    "ttft_saved_ci95_ms": ("TTFT saved 95% CI", "ms"),
    "tpot_saved_ms": ("TPOT saved", "ms"),
    "input_tps": ("Input TPS", "tokens/s"),
    "input_tps_ratio": ("Input TPS ratio", "x"),
    "input_tps_ratio_ci95_lo": ("Input TPS ratio 95% CI low", "x"),
    "input_tps_ratio_ci95_hi": ("Input TPS ratio 95% CI high", "x"),
    "input_tps_ratio_ci95": ("Input TPS ratio 95% CI", "x"),
    "prefix_cache_hits": ("GPU prefix-cache hits", "tokens"),
    "external_prefix_cache_hits": ("Store hits", "tokens"),
})

# range column -> (low column, high column)
RANGES: dict[str, tuple[str, str]] = {
    "ttft_ci95_ms": ("ttft_ci95_lo_ms", "ttft_ci95_hi_ms"),
    "diff_ci95_ms": ("diff_ci95_lo_ms", "diff_ci95_hi_ms"),
    "speedup_ci95": ("speedup_ci95_lo", "speedup_ci95_hi"),
    "ttft_delta_ci95_pct": ("ttft_delta_ci95_lo_pct", "ttft_delta_ci95_hi_pct"),
    "e2e_delta_ci95_pct": ("e2e_delta_ci95_lo_pct", "e2e_delta_ci95_hi_pct"),
    "ttft_saved_ci95_ms": ("ttft_saved_ci95_lo_ms", "ttft_saved_ci95_hi_ms"),
    "itl_added_ci95_ms": ("itl_added_ci95_lo_ms", "itl_added_ci95_hi_ms"),
    "reload_minus_recompute_ci95_ms": ("reload_minus_recompute_ci95_lo_ms", "reload_minus_recompute_ci95_hi_ms"),
    "break_even_ci95": ("ci_low", "ci_high"),
    "cross_first_ttft_ci95_ms": ("cross_first_ttft_ci95_lo_ms", "cross_first_ttft_ci95_hi_ms"),
    "cross_cold_ttft_ci95_ms": ("cross_cold_ttft_ci95_lo_ms", "cross_cold_ttft_ci95_hi_ms"),
    "hit_ttft_ci95_ms": ("hit_ttft_ci95_lo_ms", "hit_ttft_ci95_hi_ms"),
    "miss_ttft_ci95_ms": ("miss_ttft_ci95_lo_ms", "miss_ttft_ci95_hi_ms"),
    "difference_ci95": ("difference_ci95_lo", "difference_ci95_hi"),
    "ttft_saved_ci95_ms": ("ttft_saved_ci95_lo_ms", "ttft_saved_ci95_hi_ms"),
    "input_tps_ratio_ci95": ("input_tps_ratio_ci95_lo", "input_tps_ratio_ci95_hi"),
}


def name(column: str) -> str:
    """The header without its unit ("TTFT median"); the column's own name where none is set."""
    return COLUMNS.get(column, (column, None))[0]


def unit(column: str) -> str | None:
    return COLUMNS.get(column, (column, None))[1]


def label(column: str) -> str:
    """The header with its unit: "TTFT median (ms)"."""
    u = unit(column)
    return f"{name(column)} ({u})" if u else name(column)


def signed(column: str) -> bool:
    """Changes in percent are shown with their sign (+3.2, -1.0)."""
    return column.endswith("_pct")
