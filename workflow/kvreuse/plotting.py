"""Shared figure style and a reproducible save (no timestamps in the PDF)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .platforms import NAMES  # noqa: E402

PLATFORM_ORDER = list(NAMES)  # kvreuse.platforms: the one list
COLORS = {"cpu": "#7f7f7f", "h100": "#1f77b4", "h200": "#2ca02c", "a100": "#9467bd",
          "l40s": "#d62728", "rtx6000": "#8c564b",
          # H200 with tensor parallelism (the 70B model): shades of the h200's green
          "h200x2": "#5cc75c", "h200x4": "#1a7a1a", "h200x8": "#0b3d0b"}

plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "font.size": 9,
                     "axes.spines.top": False, "axes.spines.right": False,
                     "svg.hashsalt": "kvreuse", "pdf.compression": 6})


def save(fig, pdf: str, png: str, source: str | None = None) -> None:
    if source:
        fig.text(0.99, 0.005, source, ha="right", va="bottom", fontsize=6, color="#777777")
    fig.tight_layout()
    fig.savefig(pdf, metadata={"CreationDate": None, "ModDate": None, "Producer": None})
    fig.savefig(png, metadata={"Software": None})
    plt.close(fig)


def platforms_in(df) -> list[str]:
    present = list(dict.fromkeys(df["platform"])) if len(df) else []
    return [p for p in PLATFORM_ORDER if p in present] + [p for p in present if p not in PLATFORM_ORDER]


def empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777777")
    ax.set_axis_off()


def read_tables(paths) -> dict:
    """A figure's tables (its rule's ``tables`` input: results/tables/<name>.csv) by name; a
    table without rows or columns (no run of its experiment) as an empty frame."""
    from pathlib import Path

    import pandas as pd

    def read(p):
        try:
            return pd.read_csv(p)
        except pd.errors.EmptyDataError:
            return pd.DataFrame(columns=["platform", "arm", "status"])

    return {Path(p).stem: read(p) for p in ([paths] if isinstance(paths, str) else paths)}


def panels(n: int, ncols: int = 4, width: float = 2.6, height: float = 2.3):
    """A figure with ``n`` panels (at least one) in rows of ``ncols``, and its axes in order;
    panels beyond ``n`` are switched off."""
    n = max(n, 1)
    cols = min(n, ncols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.2, height * rows + 0.4), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_axis_off()
    return fig, flat[:n]


def prefix_axis(ax, lengths) -> None:
    """A log2 axis of prefix lengths with a tick at each measured one (one length too)."""
    lengths = sorted({int(x) for x in lengths})
    if not lengths:
        return
    ax.set_xscale("log", base=2)
    ax.set_xlim(lengths[0] / 1.5, lengths[-1] * 1.5)
    ax.set_xticks(lengths, [f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n) for n in lengths],
                  fontsize=6)
    ax.minorticks_off()
    ax.set_xlabel("prefix tokens", fontsize=7)


def log_ms_axis(ax, label: str = "TTFT median (ms)") -> None:
    """A log y axis of milliseconds, labelled with plain numbers (50, 100, 200)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    narrow = lo > 0 and hi / lo < 10  # less than a decade: every minor tick labelled
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if narrow or f"{v:.1g}"[0] in "25" else ""))
    ax.tick_params(axis="y", which="both", labelsize=6)
    ax.set_ylabel(label, fontsize=7)


def info_panel(ax, handles, labels, notes: list[str]) -> None:
    """The figure's legend and notes (runs not run, with why) in a panel of their own."""
    ax.set_axis_off()
    if handles:
        ax.legend(handles, labels, loc="upper left", fontsize=6, frameon=False)
    if notes:
        ax.text(0.0, 0.0 if handles else 0.5, "\n".join(notes), transform=ax.transAxes, fontsize=5.5,
                va="bottom" if handles else "center", ha="left", color="#555555", wrap=True)
