"""Cache-miss overhead: change of each offloading arm's mean TTFT (top) and mean E2E latency
(bottom) against APC alone, per platform and prompt length, for prompts nothing can reuse (left)
and prompts all in VRAM (right), with 95% CIs over server runs and prompts (our measurements only)."""
import pandas as pd

from kvreuse.plotting import empty, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
rows = t[t["ttft_delta_pct"].notna()] if "ttft_delta_pct" in t else t.iloc[0:0]
arms = sorted(rows["arm"].unique())  # one colour per arm, a bar per arm in each length's group
labels = {r.arm: r.arm_label if isinstance(getattr(r, "arm_label", None), str) else r.arm for r in rows.itertuples()}
groups = sorted({(r.platform, int(r.prompt_tokens)) for r in rows.itertuples()})
width = 0.8 / max(len(arms), 1)
fig, axes = plt.subplots(2, 2, figsize=(7, 4.6), sharey="row", sharex=True)
metrics = (("ttft", "mean TTFT change\nvs APC only (%)"), ("e2e", "mean E2E change\nvs APC only (%)"))
cases = (("miss", "nothing reusable"), ("vram_hit", "all hits in VRAM"))
for i, (metric, ylabel) in enumerate(metrics):
    axes[i, 0].set_ylabel(ylabel, fontsize=8)
    for k, (case, title) in enumerate(cases):
        ax, sub = axes[i, k], rows[rows["case"] == case]
        if i == 0:
            ax.set_title(title, fontsize=8)
        if not len(sub):
            empty(ax, f"no {case} comparison here")
            continue
        for j, arm in enumerate(arms):
            a = sub[sub["arm"] == arm]
            x = [groups.index((r.platform, int(r.prompt_tokens))) + (j - (len(arms) - 1) / 2) * width
                 for r in a.itertuples()]
            v = a[f"{metric}_delta_pct"]
            lo, hi = a[f"{metric}_delta_ci95_lo_pct"].fillna(v), a[f"{metric}_delta_ci95_hi_pct"].fillna(v)
            ax.bar(x, v, width, yerr=[v - lo, hi - v], capsize=2, color=f"C{j}",
                   label=labels[arm] if (i, k) == (0, 0) else None)
        ax.axhline(0, color="k", lw=0.6)
for ax in axes[1]:
    ax.set_xticks(range(len(groups)), [f"{p}\n{n:,} tok" for p, n in groups], fontsize=7)
if arms:
    axes[0, 0].legend(fontsize=7)
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/miss.py <- results/tables/miss.csv")
