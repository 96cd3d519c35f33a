"""Cache-miss overhead: change of mean E2E latency with each offloading arm against APC alone,
per prompt length, for prompts nothing can reuse (left) and prompts all in VRAM (right), with
95% CIs over server runs and prompts (our measurements only)."""
import numpy as np
import pandas as pd

from kvreuse.plotting import COLORS, empty, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
fig, axes = plt.subplots(1, 2, figsize=(7, 3), sharey=True)
rows = t[t["e2e_delta_pct"].notna()] if "e2e_delta_pct" in t else t.iloc[0:0]
arm_color = {arm: f"C{i}" for i, arm in enumerate(sorted(rows["arm"].unique()))}  # one colour per arm
for ax, case, title in zip(axes, ("miss", "vram_hit"), ("nothing reusable", "all hits in VRAM")):
    sub = rows[rows["case"] == case]
    if not len(sub):
        empty(ax, f"no {case} comparison here")
        continue
    for i, (_, r) in enumerate(sub.iterrows()):
        lo, hi = r.get("e2e_delta_ci95_lo_pct", np.nan), r.get("e2e_delta_ci95_hi_pct", np.nan)
        yerr = None if np.isnan(lo) else [[r.e2e_delta_pct - lo], [hi - r.e2e_delta_pct]]
        ax.bar(i, r.e2e_delta_pct, yerr=yerr, capsize=3, color=arm_color[r.arm],
               edgecolor=COLORS.get(r.platform, "k"))
    labels = [f"{r.platform}\n{r.arm_label if isinstance(r.get('arm_label'), str) else r.arm}\n"
              f"{int(r.prompt_tokens)} tok" for _, r in sub.iterrows()]
    ax.set_xticks(range(len(sub)), labels, fontsize=5)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(title, fontsize=8)
axes[0].set_ylabel("mean e2e change vs APC only (%)")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/miss.py <- results/tables/miss.csv")
