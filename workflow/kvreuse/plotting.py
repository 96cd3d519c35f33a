"""Shared figure style and a reproducible save (no timestamps in the PDF)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .platforms import NAMES  # noqa: E402

PLATFORM_ORDER = list(NAMES)  # kvreuse.platforms: the one list
COLORS = {"cpu": "#7f7f7f", "h100": "#1f77b4", "h200": "#2ca02c", "a100": "#9467bd",
          "l40s": "#d62728", "rtx6000": "#8c564b"}

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
