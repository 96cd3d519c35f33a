"""TTFT per turn of a growing chat, with the prompt tokens served from the prefix cache."""
import pandas as pd

from kvreuse.plotting import COLORS, empty, platforms_in, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
fig, ax = plt.subplots(figsize=(5, 3.2))
ax2 = ax.twinx()
for p in platforms_in(t):
    s = t[t.platform == p].sort_values("turn")
    ax.plot(s.turn, s.ttft_median_ms, marker="o", color=COLORS.get(p), label=f"{p} TTFT")
    ax2.bar(s.turn, s.hit_tokens / s.context_tokens, alpha=0.15, color=COLORS.get(p))
if len(t):
    ax.set_xlabel("turn")
    ax.set_ylabel("TTFT (ms)")
    ax2.set_ylabel("share of prompt served from cache (bars)")
    ax2.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
else:
    empty(ax, "no multiturn results")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/multiturn.py <- results/tables/multiturn.csv")
