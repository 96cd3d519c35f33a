"""Reload vs recompute after a restart, per platform. Left: reload - recompute TTFT (difference
of medians, its 95% bootstrap CI) against prefix length per arm; below zero, reloading is
faster. Right: the achieved GB/s of the loads (bytes / load time, from the store's counters)
against the links' nominal bandwidth."""
import numpy as np
import pandas as pd

from kvreuse.plotting import empty, platforms_in, plt, prefix_axis, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
plats = platforms_in(t)
fig, axes = plt.subplots(max(len(plats), 1), 2, figsize=(8, 3.0 * max(len(plats), 1)), squeeze=False)
markers = "osD^v<>p"
for (ax, gx), p in zip(axes, plats):
    sub = t[t.platform == p]
    ok = sub[(sub.status == "ok") & sub.prefix_tokens.notna()]
    if ok.empty:
        notes = "; ".join(f"{r.arm}: {r.reason or r.status}" for r in sub.drop_duplicates("arm").itertuples())
        empty(ax, f"{p}: no reload measured\n{notes}")
        empty(gx, "")
        continue
    one = ok.drop_duplicates(["arm", "prefix_tokens"]).sort_values("prefix_tokens")
    for k, (arm, a) in enumerate(one.groupby("arm", sort=False)):
        m, c = markers[k % len(markers)], f"C{k % 10}"
        d = a.dropna(subset=["reload_minus_recompute_ms"])
        yerr = [(d.reload_minus_recompute_ms - d.reload_minus_recompute_ci95_lo_ms).fillna(0).clip(lower=0),
                (d.reload_minus_recompute_ci95_hi_ms - d.reload_minus_recompute_ms).fillna(0).clip(lower=0)]
        verdicts = ", ".join(sorted(set(a.verdict.dropna().astype(str))))
        ax.errorbar(d.prefix_tokens, d.reload_minus_recompute_ms, yerr=yerr, marker=m, ms=3, color=c, lw=1,
                    capsize=2, label=f"{arm} ({verdicts or 'no verdict'})")
        g = a.dropna(subset=["achieved_gb_s"])
        if len(g):
            kernels = a.lmcache_kernels.dropna().iloc[0] if a.lmcache_kernels.notna().any() else None
            gx.plot(g.prefix_tokens, g.achieved_gb_s, marker=m, ms=3, color=c,
                    label=f"{arm} ({g.load_source.iloc[0]}{', kernels: ' + str(kernels) if kernels else ''})")
    ax.axhline(0, color="#777777", lw=0.8)
    ax.set_yscale("symlog", linthresh=10)  # the sign near zero and the size far from it
    for link, lk in ok.dropna(subset=["link"]).groupby("link"):
        gx.axhline(lk.link_gb_s.iloc[0], color="#999999", ls="-.", lw=1,
                   label=f"{link} ({lk.link_gb_s.iloc[0]:g} GB/s nominal)")
    top = pd.concat([ok.achieved_gb_s, ok.link_gb_s]).max()
    gx.set_ylim(0, (top if pd.notna(top) and top > 0 else 1) * 1.15)
    for a in (ax, gx):
        prefix_axis(a, one.prefix_tokens)
        a.legend(fontsize=5)
    ax.set_ylabel("reload - recompute TTFT (ms, symlog)")
    ax.set_title(f"{p}: reload after a restart minus recompute (< 0: reload faster)", fontsize=8)
    gx.set_ylabel("achieved GB/s (bytes / load time)")
    gx.set_title(f"{p}: load bandwidth", fontsize=8)
    if not np.isfinite(ok.achieved_gb_s.to_numpy(float)).any():
        gx.text(0.5, 0.5, "no load counted by the store's counters", transform=gx.transAxes, ha="center",
                fontsize=7, color="#777777")
if not plats:
    empty(axes[0][0], "no reload_vs_recompute results")
    empty(axes[0][1], "")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/reload_vs_recompute.py <- results/tables/reload_vs_recompute.csv")
