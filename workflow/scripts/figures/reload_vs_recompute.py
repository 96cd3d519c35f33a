"""Reload vs recompute after a restart: measured loads (LMCache, vLLM's offloading) beside
bytes / link bandwidth.

Left: time against prefix length (TTFT of the reload and of recomputing the same length, the
load time LMCache reports, and the analytic load time per link). Right: achieved GB/s of the
loads against the links' nominal bandwidth.
"""
import pandas as pd

from kvreuse.kernels import NOT_APPLICABLE as NO_LMCACHE
from kvreuse.plotting import empty, platforms_in, plt, save
from kvreuse.rulelog import to_rule_log

to_rule_log(snakemake)  # noqa: F821
t = pd.read_csv(snakemake.input.table)  # noqa: F821
plats = platforms_in(t)
fig, axes = plt.subplots(max(len(plats), 1), 2, figsize=(8, 3.0 * max(len(plats), 1)), squeeze=False)
markers = "osD^v<>"
for (ax, gx), p in zip(axes, plats):
    sub = t[t.platform == p]
    ok = sub[(sub.status == "ok") & sub.prefix_tokens.notna()]
    if ok.empty:
        notes = "; ".join(f"{r.arm}: {r.reason or r.status}" for r in sub.drop_duplicates("arm").itertuples())
        empty(ax, f"{p}: no reload measured\n{notes}")
        empty(gx, "")
        continue
    one = ok.drop_duplicates(["arm", "prefix_tokens"]).sort_values("prefix_tokens")
    for k, (_, a) in enumerate(one[one.reload_ttft_ms.notna()].groupby("arm")):
        m, c = markers[k % len(markers)], f"C{k % 10}"
        kernels = a.lmcache_kernels.dropna().iloc[0] if a.lmcache_kernels.notna().any() else "?"
        arm = a.arm_label.iloc[0]  # marked where LMCache ran its torch fallback
        ax.plot(a.prefix_tokens, a.reload_ttft_ms, marker=m, ms=4, color=c, label=f"{arm}: TTFT of the reload")
        ax.plot(a.prefix_tokens, a.load_ms, marker=m, ms=3, ls=":", color=c,
                label=f"{arm}: load time ({a.load_source.dropna().iloc[0] if a.load_source.notna().any() else '?'})")
        ax.plot(a.prefix_tokens, a.recompute_ttft_ms, marker=m, ms=3, ls="--", color=c, alpha=0.6,
                label=f"{arm}: TTFT recomputing the same length")
        gx.plot(a.prefix_tokens, a.achieved_gb_s, marker=m, ms=4, color=c,
                label=f"{arm}" + (f" (LMCache kernels: {kernels})" if kernels != NO_LMCACHE else ""))
    apc = one.dropna(subset=["apc_cold_ttft_ms"]).drop_duplicates("prefix_tokens")
    if len(apc):
        ax.plot(apc.prefix_tokens, apc.apc_cold_ttft_ms, color="#444444", lw=1, marker=".",
                label="APC-only cold TTFT (recompute)")
    pre = one[one.reload_ttft_ms.isna()].dropna(subset=["recompute_prefill_ms"]).drop_duplicates("prefix_tokens")
    if len(pre):
        ax.plot(pre.prefix_tokens, pre.recompute_prefill_ms, color="#444444", lw=1, ls="--",
                label="APC-only prefill time (server histogram)")
    for link, lk in ok.dropna(subset=["link"]).groupby("link"):
        lk = lk.drop_duplicates("prefix_tokens").sort_values("prefix_tokens")
        ax.plot(lk.prefix_tokens, lk.model_load_ms, color="#999999", ls="-.", lw=1,
                label=f"model: bytes / {link} ({lk.link_gb_s.iloc[0]:g} GB/s)")
        gx.axhline(lk.link_gb_s.iloc[0], color="#999999", ls="-.", lw=1, label=f"{link} (nominal)")
    top = pd.concat([ok.achieved_gb_s, ok.link_gb_s]).max()
    gx.set_ylim(0, (top if pd.notna(top) else 1) * 1.15)
    for a in (ax, gx):
        a.set_xlim(ok.prefix_tokens.min() / 1.5, ok.prefix_tokens.max() * 1.5)
        a.set_xscale("log", base=2)
        a.set_xlabel("prefix tokens")
        a.legend(fontsize=5.5)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_title(f"{p}: reload after a restart vs recompute", fontsize=8)
    gx.set_ylabel("achieved GB/s (bytes / load time)")
    gx.set_title(f"{p}: load bandwidth", fontsize=8)
if not plats:
    empty(axes[0][0], "no reload_vs_recompute results")
    empty(axes[0][1], "")
save(fig, snakemake.output.pdf, snakemake.output.png,  # noqa: F821
     source="workflow/scripts/figures/reload_vs_recompute.py <- results/tables/reload_vs_recompute.csv")
