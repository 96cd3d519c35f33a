"""TTFT against prefix length: a truly cold prefix vs the same prefix warm (APC hit)."""
import pandas as pd

from kvreuse.plotting import COLORS, empty, platforms_in, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
fig, ax = plt.subplots(figsize=(5, 3.2))
for p in platforms_in(t):
    for arm in sorted(t[t.platform == p].arm.unique()):
        for kind, ls in (("cold", "-"), ("warm", "--")):
            s = t[(t.platform == p) & (t.arm == arm) & (t.kind == kind)].sort_values("prefix_tokens")
            ax.errorbar(s.prefix_tokens, s.ttft_median_ms,
                        yerr=[(s.ttft_median_ms - s.ttft_ci95_lo_ms).fillna(0), (s.ttft_ci95_hi_ms - s.ttft_median_ms).fillna(0)],
                        ls=ls, marker="o", ms=3, color=COLORS.get(p), label=f"{p} {arm} {kind}")
if len(t):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("prefix tokens")
    ax.set_ylabel("TTFT median (ms)")
    ax.legend(fontsize=6)
else:
    empty(ax, "no prefix_sweep results")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/prefix_sweep.py <- results/tables/prefix_sweep.csv")
