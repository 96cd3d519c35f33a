"""Break-even prefix length per store (arm) and platform: TTFT against prefix length of the
first request on a populated prefix after a restart (the reload) and of a never-seen prompt of
the same length (the recompute), medians with their 95% CIs; the analytic model's reload
(fixed overhead + KV bytes / the link's nominal bandwidth) per link; the measured break-even
with its bootstrap interval (shaded) and the model's (dotted). Arms that did not run are listed
with why."""
import numpy as np
import pandas as pd

from kvreuse.plotting import empty, info_panel, log_ms_axis, panels, platforms_in, prefix_axis, read_tables, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
tables = read_tables(snakemake.input.tables)  # noqa: F821
be, per_length = tables["break_even"], tables["reload_vs_recompute"]
measured = be[be.estimate == "measured"] if len(be) else be
shown = [r for p in platforms_in(measured) for _, r in measured[measured.platform == p].iterrows()
         if r.status != "not run"]
skipped = measured[measured.status == "not run"] if len(measured) else measured
fig, axes = panels(len(shown) + 2, ncols=3, width=3.0, height=2.5)  # the legend, then the notes
legend: dict = {}
for ax, r in zip(axes, shown):
    rows = per_length[(per_length.platform == r.platform) & (per_length.arm == r.arm)]
    one = rows.drop_duplicates("prefix_tokens").dropna(subset=["prefix_tokens"]).sort_values("prefix_tokens")
    for side, label, color, marker, ls in (("reload", "first after restart (reload)", "#d62728", "s", "-"),
                                           ("recompute", "never-seen (recompute)", "#444444", "D", "--")):
        s = one.dropna(subset=[f"{side}_ttft_ms"])
        yerr = [(s[f"{side}_ttft_ms"] - s[f"{side}_ttft_ci95_lo_ms"]).fillna(0).clip(lower=0),
                (s[f"{side}_ttft_ci95_hi_ms"] - s[f"{side}_ttft_ms"]).fillna(0).clip(lower=0)]
        # the reloads at lengths where the counters show none are hollow: recomputes, left out
        none = (s.verdict == "not persisted") if side == "reload" and "verdict" in s else s.index != s.index
        ax.errorbar(s.prefix_tokens, s[f"{side}_ttft_ms"], yerr=yerr, color=color, marker=None, ls=ls, lw=1,
                    capsize=2)
        ax.plot(s.prefix_tokens[~none], s[f"{side}_ttft_ms"][~none], ls=ls, marker=marker, ms=3.5, lw=1,
                color=color, label=f"{label}, median, 95% CI")
        if none.any():
            ax.plot(s.prefix_tokens[none], s[f"{side}_ttft_ms"][none], ls="none", marker=marker, ms=4.5,
                    mfc="white", mec=color, zorder=4, label="first after restart: no reload by the counters (left out)")
    models = be[(be.platform == r.platform) & (be.arm == r.arm) & (be.estimate == "model")]
    texts = []
    for m in models.itertuples():
        lk = rows[rows.link == m.link].dropna(subset=["model_load_ms"]).sort_values("prefix_tokens")
        if len(lk):
            ax.plot(lk.prefix_tokens, m.model_overhead_ms + lk.model_load_ms, color="#1f77b4", ls="-.", lw=1,
                    marker="x", ms=3.5, label="model: fixed overhead + KV bytes / link (nominal)")
            texts.append(f"model: {m.model_overhead_ms:.0f} ms + bytes / {m.link} {m.link_gb_s:g} GB/s")
        if pd.notna(m.break_even_tokens):
            ax.axvline(m.break_even_tokens, color="#1f77b4", ls=":", lw=1, label="model's break-even")
    if pd.notna(r.break_even_tokens):
        lo = r.ci_low if pd.notna(r.ci_low) else (one.prefix_tokens.min() / 1.5 if len(one) else np.nan)
        hi = r.ci_high if pd.notna(r.ci_high) else (one.prefix_tokens.max() * 1.5 if len(one) else np.nan)
        if pd.notna(lo) and pd.notna(hi):
            ax.axvspan(lo, hi, color="#d62728", alpha=0.12, lw=0, label="break-even, 95% bootstrap interval")
        ax.axvline(r.break_even_tokens, color="#d62728", lw=1, label="break-even (measured)")
    if len(one):
        prefix_axis(ax, one.prefix_tokens)
        log_ms_axis(ax)
    else:
        empty(ax, "no reload measured")
    found = f"break-even {r.break_even_tokens:,.0f} tokens" if r.status == "crossing" else r.status
    notes = [n for n, on in (("archived", r.get("freshness") == "archived"),
                             ("LMCache torch fallback", r.get("lmcache_kernels") == "fallback")) if on]
    ax.set_title("\n".join([f"{r.platform} / {r.arm}{' (' + ', '.join(notes) + ')' if notes else ''}", found,
                            *texts]), fontsize=6.5)
    for h, lab in zip(*ax.get_legend_handles_labels()):
        legend.setdefault(lab, h)
info_panel(axes[len(shown)], list(legend.values()), list(legend), [])
info_panel(axes[len(shown) + 1], [], [], [
    "Break-even: from this length on, reloading is faster than recomputing.",
    *(dict.fromkeys(f"{r.arm}: {r.store}" for r in shown) or ["no restart runs: no break-even"]),
    *[f"{r.platform} / {r.arm}: not run ({r.reason})" for r in skipped.itertuples()]])
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/break_even.py <- results/tables/break_even.csv, reload_vs_recompute.csv")
