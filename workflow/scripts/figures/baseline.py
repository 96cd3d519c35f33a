"""Baseline TTFT (APC off) per platform: our measurement, 95% CI, per-request distribution."""
import pandas as pd

from kvreuse.plotting import COLORS, empty, platforms_in, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
t = t[t.phase == "measured"]
plats = platforms_in(t)
fig, ax = plt.subplots(figsize=(4.5, 3))
for i, p in enumerate(plats):
    r = t[t.platform == p].iloc[0]
    ax.bar(i, r.ttft_median_ms, color=COLORS.get(p, "C0"),
           yerr=[[r.ttft_median_ms - r.ttft_ci95_lo_ms], [r.ttft_ci95_hi_ms - r.ttft_median_ms]], capsize=3)
    ax.annotate(f"{r.ttft_median_ms:.1f} ms", (i, r.ttft_median_ms), ha="center", va="bottom", fontsize=7)
if plats:
    ax.set_xticks(range(len(plats)), plats)
    ax.set_ylabel("TTFT median (ms), APC off")
else:
    empty(ax, "no baseline results")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/baseline.py <- results/tables/baseline.csv")
