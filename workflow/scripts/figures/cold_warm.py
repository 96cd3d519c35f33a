"""Cold vs warm TTFT per platform (APC), with 95% CIs and the counters' hit tokens."""
import pandas as pd

from kvreuse.plotting import COLORS, empty, platforms_in, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
t = t[t.phase.isin(["cold", "warm"])]
plats = platforms_in(t)
fig, axes = plt.subplots(1, max(len(plats), 1), figsize=(2.6 * max(len(plats), 1), 2.8), squeeze=False)
for ax, p in zip(axes[0], plats):
    sub = t[t.platform == p].set_index("phase").reindex(["cold", "warm"])
    err = [(sub.ttft_median_ms - sub.ttft_ci95_lo_ms).fillna(0), (sub.ttft_ci95_hi_ms - sub.ttft_median_ms).fillna(0)]
    ax.bar(["cold", "warm"], sub.ttft_median_ms, yerr=err, color=[COLORS.get(p, "C0"), "#bbbbbb"], capsize=3)
    for i, (_, r) in enumerate(sub.iterrows()):
        ax.annotate(f"{r.ttft_median_ms:.0f} ms\nhits {r.hit_tokens:.0f} tok", (i, r.ttft_median_ms),
                    ha="center", va="bottom", fontsize=7)
    ax.set_title(p)
    ax.set_ylabel("TTFT median (ms)")
if not plats:
    empty(axes[0][0], "no cold_warm results")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/cold_warm.py <- results/tables/cold_warm.csv")
