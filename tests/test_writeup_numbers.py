"""The write-up states only what the tables show: no digit is typed in its templates' text (every
number, version and threshold comes from the context that kvreuse.paper builds from the tables,
cited.yaml and the model's config), and a sentence that compares follows the numbers."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pandas as pd
import pytest

from kvreuse import claims, latex, paper

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ["kvreuse.md.j2", "accounting.md.j2", "reload.md.j2", "decision.md.j2", "kvreuse.tex.j2",
             "accounting.tex.j2", "reload.tex.j2", "decision.tex.j2", "kvreuse.bib.j2",
             "conversations.md.j2", "conversations.tex.j2", "pressure.md.j2", "pressure.tex.j2"]
#: names that hold a digit and are not numbers; nothing else with a digit may be typed
ALLOWED = ("sha256", "E2E", "e2e", "p99")
#: numbering, not numbers: Markdown's numbered headings and list items
NUMBERING = (re.compile(r"^#+ \d+\. ", re.M), re.compile(r"^\d+\. ", re.M))


def text_of(name: str) -> str:
    """The template's own text (Jinja's lexer: data tokens only), without the LaTeX preamble."""
    source = (REPO / "paper" / name).read_text()
    env = latex.environment(REPO / "paper") if ".tex" in name or ".bib" in name else jinja2.Environment()
    data = "".join(value for _, kind, value in env.lex(source) if kind == "data")
    if name == "kvreuse.tex.j2":
        data = data[data.index(r"\begin{document}"):]
    if ".tex" in name or ".bib" in name:  # LaTeX comments are not printed
        data = re.sub(r"(?m)^\s*%.*$", "", data)
    return data


@pytest.mark.parametrize("name", TEMPLATES)
def test_no_number_is_typed_in_a_template(name):
    text = text_of(name)
    for pattern in NUMBERING:
        text = pattern.sub("", text)
    for word in ALLOWED:
        text = text.replace(word, "")
    lines = [line for line in text.splitlines() if re.search(r"\d", line)]
    assert not lines, f"{name}: digits typed in the template:\n" + "\n".join(lines)


def _restart(first: float, cold: float) -> pd.DataFrame:
    return pd.DataFrame([{"platform": "h100", "arm": "lmcache_disk", "status": "ok",
                          "post_restart_first_ttft_median_ms": first, "post_restart_cold_ttft_median_ms": cold}])


def test_reload_sentence_follows_the_numbers():
    kernels = paper.lmcache_kernels(pd.DataFrame({"platform": [], "experiment": [], "arm": []}))
    assert paper.restart_rows(_restart(80.0, 120.0), kernels)[0]["reload_beat_recompute"] is True
    assert paper.restart_rows(_restart(130.0, 120.0), kernels)[0]["reload_beat_recompute"] is False


def test_fallback_sentence_only_when_every_lmcache_run_fell_back():
    runs = pd.DataFrame({"platform": ["h100"] * 3, "experiment": ["restart"] * 3,
                         "arm": ["lmcache_cpu", "lmcache_disk", "apc"],
                         "lmcache_kernels": ["fallback", "fallback", None]})
    assert paper.lmcache_kernels(runs)["all_fallback"]
    runs.loc[1, "lmcache_kernels"] = "cuda"
    k = paper.lmcache_kernels(runs)
    assert not k["all_fallback"] and k["counts"] == {"fallback": 1, "cuda": 1}


CITED = {"studies": {"s": {"file": "x.txt", "title": "S"}}, "claims": [
    {"group": "g", "source": "s", "title": "T", "setup": {"gpu": "h100"}, "measures": "E2E",
     "ours": {"table": "restart", "select": {"arm": "lmcache_disk"}},
     "claims": [
         {"id": "faster", "quantity": "reload speedup", "value": 1.5, "unit": "x", "excerpt": "e",
          "ours": {"ratio": [{"column": "post_restart_cold_ttft_median_ms"},
                             {"column": "post_restart_first_ttft_median_ms"}]}},
         {"id": "bound", "kind": "at_most", "quantity": "first", "value": 100, "unit": "ms", "excerpt": "e",
          "ours": {"column": "post_restart_first_ttft_median_ms"}},
         {"id": "l40s", "quantity": "q", "value": 1, "unit": "ms", "excerpt": "e", "not_measurable": "no L40S"}]},
    {"group": "r", "source": "s", "title": "R", "setup": {"gpu": "h100"}, "measures": "E2E",
     "ours": {"table": "random_overhead"},
     "claims": [{"id": "none", "kind": "effect", "expect": "none", "quantity": "change", "value": 0.0,
                 "unit": "%", "excerpt": "e", "ours": {"column": "e2e_delta_pct",
                                                       "ci": ["e2e_delta_ci95_lo_pct", "e2e_delta_ci95_hi_pct"]}}]}]}


def _verdicts(first: float, cold: float, lo: float, hi: float) -> dict:
    tables = {"restart": _restart(first, cold),
              "random_overhead": pd.DataFrame([{"platform": "h100", "arm": "lmcache_cpu", "e2e_delta_pct": (lo + hi) / 2,
                                                "e2e_delta_ci95_lo_pct": lo, "e2e_delta_ci95_hi_pct": hi}])}
    t = claims.table(CITED, tables)
    return dict(zip(t["id"], t["verdict"]))


def test_changing_one_row_flips_the_verdicts():
    assert _verdicts(80.0, 120.0, -2.0, 3.0) == {"faster": "reproduced", "bound": "reproduced",
                                                 "l40s": "not measurable", "none": "reproduced"}
    assert _verdicts(130.0, 120.0, 6.0, 20.0) == {"faster": "differs", "bound": "refuted",
                                                  "l40s": "not measurable", "none": "refuted"}


def test_a_missing_row_is_not_measured_with_the_reason():
    t = claims.table(CITED, {"restart": _restart(80.0, 120.0)})
    row = t.set_index("id").loc["none"]
    assert row.verdict == "not measured" and "random_overhead.csv has no rows" in row.reason


SEEDS = Path("/work/shared/seeds")


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the source studies' texts are not on this machine")
def test_every_excerpt_is_in_its_study():
    import yaml

    cited = yaml.safe_load((REPO / "workflow/resources/cited.yaml").read_text())
    norm = " ".join
    for c in claims.claims(cited) + [{"id": k, **m} for k, m in cited["method"].items()]:
        text = norm((SEEDS / cited["studies"][c["source"]]["file"]).read_text().split())
        assert norm(c["excerpt"].split()) in text, c["id"]
