"""Reload against recompute with tensor parallelism: per store (arm) that a restart run measured
on several GPUs, recompute TTFT / reload TTFT after the restart against prefix length, one line
per platform (its model and tensor parallelism), medians' ratio with its 95% bootstrap CI. Above
1, reloading was faster; the measured break-even of each run in the legend."""
import pandas as pd

from kvreuse.plotting import COLORS, empty, info_panel, log_ms_axis, panels, platforms_in, prefix_axis, read_tables, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = read_tables(snakemake.input.tables)["tensor_parallel"]  # noqa: F821
arms = list(dict.fromkeys(t.arm)) if len(t) else []
fig, axes = panels(len(arms) + 1, ncols=3, width=3.2, height=3.1)
for ax, arm in zip(axes, arms):
    a = t[t.arm == arm]
    for p in platforms_in(a):
        s = a[a.platform == p].sort_values("prefix_tokens")
        r = s.iloc[0]
        found = (f"break-even {r.break_even_tokens:,.0f} tokens" if pd.notna(r.break_even_tokens)
                 else str(r.break_even_status))
        y = s.reload_speedup
        ax.errorbar(s.prefix_tokens, y, yerr=[(y - s.reload_speedup_ci95_lo).fillna(0).clip(lower=0),
                                              (s.reload_speedup_ci95_hi - y).fillna(0).clip(lower=0)],
                    color=COLORS.get(p), marker="o", ms=3.5, lw=1, capsize=2,
                    label=f"{p}: {r.model}, TP {r.tensor_parallel:.0f}: {found}")
    ax.axhline(1.0, color="#777777", lw=0.8, ls=":")
    prefix_axis(ax, a.prefix_tokens)
    log_ms_axis(ax, label="recompute / reload TTFT")
    ax.set_title(f"{arm}\n{a.store.iloc[0]}", fontsize=7)
    ax.legend(fontsize=5.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.22))
if not arms:
    empty(axes[0], "no restart run with tensor parallelism")
info_panel(axes[len(arms)], [], [], [
    "Above 1: reloading the prefix after the restart was faster than",
    "recomputing a never-seen prompt of the same length (medians' ratio, 95% CI).",
    "Each platform serves its own model: the ratio, not the times, compares them."])
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/tensor_parallel.py <- results/tables/tensor_parallel.csv")
