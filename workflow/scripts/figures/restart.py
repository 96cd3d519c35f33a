"""The KV cache across a restart, one panel per store (arm) and platform: TTFT against prefix
length of the populating request (cold), its warm requests, the first request on a populated
prefix after the restart (the reload), the later ones (steady) and a never-seen prompt of the
same length after the restart (the recompute reference); the verdict from counters and outputs
in the panel's title. Arms that did not run are listed with why."""
import pandas as pd

from kvreuse.plotting import info_panel, log_ms_axis, panels, platforms_in, prefix_axis, read_tables, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
tables = read_tables(snakemake.input.tables)  # noqa: F821
runs, lengths = tables["restart"], tables["reload_vs_recompute"]
LINES = [("populate_ttft_ms", "cold (populate)", "#444444", "o", "-"),
         ("warm_ttft_ms", "warm, before the stop", "#2ca02c", ".", "-"),
         ("reload_ttft_ms", "first after restart (reload)", "#d62728", "s", "-"),
         ("steady_ttft_ms", "steady after restart", "#1f77b4", "^", ""),
         ("recompute_ttft_ms", "never-seen after restart (recompute)", "#999999", "D", "--")]


def verdict_text(r) -> str:
    v = r.get("verdict") if isinstance(r.get("verdict"), str) else (
        "persisted" if r.get("persisted") else "not persisted")
    if v == "partial" and pd.notna(r.get("hit_fraction")):
        v = f"partial ({r['hit_fraction']:.0%} reused)"
    return v


shown = [r for p in platforms_in(runs) for _, r in runs[runs.platform == p].iterrows() if r.status == "ok"]
skipped = runs[runs.status != "ok"] if len(runs) else runs
fig, axes = panels(len(shown) + 1, ncols=3, width=3.0)
for ax, r in zip(axes, shown):
    sub = lengths[(lengths.platform == r.platform) & (lengths.arm == r.arm)].drop_duplicates("prefix_tokens")
    sub = sub.dropna(subset=["prefix_tokens"]).sort_values("prefix_tokens")
    for col, label, color, marker, ls in LINES:
        s = sub.dropna(subset=[col])
        if s.empty:
            continue
        side = col.removesuffix("_ttft_ms")
        lo, hi = f"{side}_ttft_ci95_lo_ms", f"{side}_ttft_ci95_hi_ms"
        yerr = ([(s[col] - s[lo]).fillna(0).clip(lower=0), (s[hi] - s[col]).fillna(0).clip(lower=0)]
                if lo in s else None)
        ax.errorbar(s.prefix_tokens, s[col], yerr=yerr, color=color, marker=marker, ms=3, ls=ls or "none",
                    lw=1, capsize=2, label=label)
    prefix_axis(ax, sub.prefix_tokens)
    log_ms_axis(ax)
    notes = [n for n, on in (("archived", r.get("freshness") == "archived"),
                             ("LMCache torch fallback", r.get("lmcache_kernels") == "fallback")) if on]
    ax.set_title(f"{r.platform} / {r.arm}{' (' + ', '.join(notes) + ')' if notes else ''}\n"
                 f"verdict: {verdict_text(r)}", fontsize=6.5)
handles, labels = axes[0].get_legend_handles_labels() if shown else ([], [])
info_panel(axes[len(shown)], handles, labels,
           ["Verdicts from the hit counters and outputs, never from time."]
           + [f"{r.platform} / {r.arm}: not run ({r.reason})" for r in skipped.itertuples()]
           + ([] if len(runs) else ["no restart results"]))
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/restart.py <- results/tables/restart.csv, reload_vs_recompute.csv")
