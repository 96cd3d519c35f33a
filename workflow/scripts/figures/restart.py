"""Per arm: cold (populate), first request after a restart on a populated prefix, steady after
the restart, and a never-seen prefix after the restart (the recompute reference); the verdict
from counters and outputs above each arm, whose name is marked where LMCache's kernels did not
load ("(torch fallback)")."""
import textwrap

import numpy as np
import pandas as pd

from kvreuse.plotting import empty, platforms_in, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
plats = platforms_in(t)
phases = [("populate", "cold (populate)", "#444444"), ("post_restart_first", "first after restart", "#d62728"),
          ("post_restart_steady", "steady after restart", "#1f77b4"),
          ("post_restart_cold", "never-seen after restart", "#aaaaaa")]
width = 0.8 / len(phases)
fig, axes = plt.subplots(len(plats) or 1, 1, figsize=(7, 2.6 * max(len(plats), 1)), squeeze=False)
for ax, p in zip(axes[:, 0], plats):
    sub = t[t.platform == p].reset_index(drop=True)
    x = np.arange(len(sub))
    for k, (ph, label, color) in enumerate(phases):
        col = f"{ph}_ttft_median_ms"
        vals = sub[col] if col in sub else pd.Series([np.nan] * len(sub))
        ax.bar(x + (k - (len(phases) - 1) / 2) * width, vals, width=width, label=label, color=color)
    top = np.nanmax(sub[[f"{ph}_ttft_median_ms" for ph, _, _ in phases if f"{ph}_ttft_median_ms" in sub]]
                    .to_numpy(float), initial=1.0)
    ax.set_ylim(0, top * 1.2)  # headroom for the verdicts
    for i, r in sub.iterrows():
        if r.status != "ok":
            # the reason, shortened to fit beside the bars (restart.csv has it whole)
            ax.text(i, 0, "not run:\n" + textwrap.shorten(str(r.reason), 40, placeholder="..."),
                    ha="center", va="bottom", fontsize=5, rotation=90)
        else:
            # the verdict (kvreuse.verdict) where the table has one, else the boolean
            v = r.get("verdict") if isinstance(r.get("verdict"), str) else (
                "persisted" if r.get("persisted") else "not persisted")
            if v == "partial" and pd.notna(r.get("hit_fraction")):
                v = f"partial ({r['hit_fraction']:.0%})"
            ax.text(i, top * 1.06, v, ha="center", fontsize=7)
    # the arm as the table labels it: marked where LMCache ran its torch fallback (kvreuse.kernels)
    ax.set_xticks(x, sub.arm_label if "arm_label" in sub else sub.arm, fontsize=6, rotation=20, ha="right")
    ax.set_ylabel("TTFT median (ms)")
    archived = "freshness" in sub and len(sub) and (sub.freshness == "archived").all()
    ax.set_title(f"{p}{' (archived results)' if archived else ''}: the KV cache across a vLLM restart "
                 f"(verdicts: counters and outputs)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
if not plats:
    empty(axes[0][0], "no restart results")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/restart.py <- results/tables/restart.csv")
