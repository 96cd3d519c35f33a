"""The write-up's LaTeX: built from a real (small) artifact's tables and figures, compiled with
latexmk, checked in LaTeX's own log (nothing runs off the page) and in the PDF (made by pdfTeX).

latexmk is required, not skipped: envs/install-cpu.sh installs it (README), and CI runs that first.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd
import pymupdf
import pytest
import yaml

from kvreuse import artifact, decision, labels, latex, latexmk, paper

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "tests/data/artifact-small.tar.gz"
SMALL_SHA = (REPO / "tests/data/artifact-small.tar.gz.sha256").read_text().split()[0]
NASTY = r"50% of a_b & c #1 {x} ~y ^z \ <w> $5 --flag"
TOLERANCE_PT = 5.0


def test_latexmk_is_installed():
    assert shutil.which("latexmk"), latexmk.INSTALL


def _write_up(root: Path) -> dict[str, Path]:
    """The write-up of the small artifact's results under ``root`` (a repository layout), with a
    source study and a failed attempt whose texts hold every LaTeX special character."""
    artifact.unpack(SMALL, SMALL_SHA, root)
    tables = {p.stem: p.relative_to(root) for p in (root / "results/tables").glob("*.csv")}
    figs = root / "results/figures"
    for name in ("reload_vs_recompute", "break_even", "cross_instance"):  # the small artifact predates these figures
        if not (figs / f"{name}.pdf").exists():
            for ext in ("pdf", "png"):
                shutil.copyfile(figs / f"restart.{ext}", figs / f"{name}.{ext}")
    if "cross_instance" not in tables:  # nor this table: a measured row and a run not run
        _cross_instance_table().to_csv(root / "results/tables/cross_instance.csv", index=False)
        tables["cross_instance"] = Path("results/tables/cross_instance.csv")
    if "remote" not in tables:  # nor this one: a measured row and a run not run
        _remote_table().to_csv(root / "results/tables/remote.csv", index=False)
        tables["remote"] = Path("results/tables/remote.csv")
    from test_conversations import conversation_tables  # nor these: stand-in runs, one not run

    for name, table in conversation_tables(root / "conversation-runs").items():
        if name not in tables:
            table.to_csv(root / f"results/tables/{name}.csv", index=False)
            tables[name] = Path(f"results/tables/{name}.csv")
    from test_decision_issue13 import tables_from_runs  # nor pressure and miss: stand-in runs

    made = tables_from_runs()
    for name in ("pressure", "miss"):
        if name not in tables:
            made[name].to_csv(root / f"results/tables/{name}.csv", index=False)
            tables[name] = Path(f"results/tables/{name}.csv")
    figures = {p.stem: p.relative_to(root) for p in figs.glob("*.png")}
    cited = yaml.safe_load((REPO / "workflow/resources/cited.yaml").read_text())
    cited["studies"]["seed001"]["title"] += f" [{NASTY}]"
    (root / "cited.yaml").write_text(yaml.safe_dump(cited))
    if "decision" not in tables:  # as the decision rule makes it
        links = yaml.safe_load((REPO / "workflow/resources/decision.yaml").read_text())["links"]
        read = {n: pd.read_csv(root / tables[n]) for n in decision.source_tables() + ["runs"] if n in tables}
        decision.table(read, cited, links).to_csv(
            root / "results/tables/decision.csv", index=False)
        tables["decision"] = Path("results/tables/decision.csv")
    attempts = root / "results/raw/cpu/attempts.yaml"
    attempts.parent.mkdir(parents=True, exist_ok=True)
    attempts.write_text(yaml.safe_dump([{"experiment": "restart", "arm": "lmcache_x", "outcome": "failed",
                                         "reason": NASTY, "evidence": "results/gpu-logs/a_b%c.tgz"}]))
    for t in (REPO / "paper").glob("*.j2"):
        shutil.copyfile(t, root / "paper" / t.name)
    shutil.copyfile(REPO / "CITATION.cff", root / "CITATION.cff")
    out = {k: Path(f"paper/build/kvreuse.{k}") for k in ("md", "tex", "bib", "pdf")}
    cite = artifact.citation(results_sha256="ab" * 32)
    cwd = os.getcwd()
    os.chdir(root)  # as in the paper rule: relative paths from the repository root
    try:
        paper.build({k: Path(f"paper/kvreuse.{k}.j2") for k in ("md", "tex", "bib")}, tables, figures,
                    Path("cited.yaml"), REPO / "workflow/resources/llama-3.1-8b/config.json", out,
                    repo=root, cite=cite, attempts=[str(attempts.relative_to(root))])
    finally:
        os.chdir(cwd)
    return {k: root / v for k, v in out.items()} | {"log": root / "paper/build/kvreuse.log"}


def _cross_instance_table() -> pd.DataFrame:
    from kvreuse.tables_cross_instance import COLUMNS

    ok = {"platform": "h200", "arm": "lmcache_mp", "status": "ok", "reason": "", "prefix_tokens": 32768,
          "instance_a_stopped": True, "n_cross_first": 3, "n_cross_cold": 3, "cross_first_ttft_median_ms": 312.5,
          "cross_first_ttft_ci95_lo_ms": 300.25, "cross_first_ttft_ci95_hi_ms": 330.0,
          "cross_cold_ttft_median_ms": 2412.5, "cross_cold_ttft_ci95_lo_ms": 2400.0,
          "cross_cold_ttft_ci95_hi_ms": 2450.75, "diff_median_ms": 2100.0, "diff_ci95_lo_ms": 2080.5,
          "diff_ci95_hi_ms": 2120.25, "speedup": 7.72, "speedup_ci95_lo": 7.3, "speedup_ci95_hi": 8.1,
          "hit_tokens": 98304.0, "reusable_tokens": 32768, "hit_fraction": 1.0, "hit_fraction_min": 1.0,
          "lmcache_hit_tokens": 98304.0, "cross_cold_hit_tokens": 0.0, "output_equal": True,
          "cuda_kernels": "loaded", "gpus_a": "0", "gpus_b": "0", "cross_gpu": False}
    # across GPUs (issue 14): A on GPU 0, B on GPU 1 of an h200x2 host
    pair = {**ok, "platform": "h200x2", "gpus_a": "0", "gpus_b": "1", "cross_gpu": True, "diff_median_ms": 2050.0}
    nr = {"platform": "cpu", "arm": "lmcache_mp", "status": "not_run", "reason": NASTY}
    return pd.DataFrame([ok, pair, nr], columns=COLUMNS)


def _remote_table() -> pd.DataFrame:
    from kvreuse.tables_remote import COLUMNS

    ok = {"platform": "h200", "arm": "lmcache_redis", "status": "ok", "reason": "", "store": "redis",
          "store_version": "7.0.15", "prefix_tokens": 19968, "n_hit": 5, "n_miss": 5,
          "hit_ttft_median_ms": 388.5, "hit_ttft_ci95_lo_ms": 380.0, "hit_ttft_ci95_hi_ms": 400.25,
          "miss_ttft_median_ms": 746.0, "miss_ttft_ci95_lo_ms": 730.5, "miss_ttft_ci95_hi_ms": 760.0,
          "diff_median_ms": 357.5, "diff_ci95_lo_ms": 340.0, "diff_ci95_hi_ms": 370.25, "speedup": 1.92,
          "speedup_ci95_lo": 1.85, "speedup_ci95_hi": 1.99, "hit_tokens": 99840.0, "reusable_tokens": 19968,
          "hit_fraction": 1.0, "hit_fraction_min": 1.0, "persistence": "persisted", "miss_hit_tokens": 0.0,
          "stored_gb": 13.09, "store_grew_gb": 13.5, "cuda_kernels": "loaded"}
    # a store that served nothing after the restart: its "hit" side was recomputed
    none = {**ok, "arm": "lmcache_remote_server", "store": "lm_server", "store_version": None,
            "hit_ttft_median_ms": 3841.7, "miss_ttft_median_ms": 3284.3, "diff_median_ms": -557.4,
            "diff_ci95_lo_ms": -1496.9, "diff_ci95_hi_ms": -469.8, "speedup": 0.85, "speedup_ci95_lo": 0.61,
            "speedup_ci95_hi": 0.88, "hit_tokens": 0.0, "hit_fraction": 0.0, "hit_fraction_min": 0.0,
            "persistence": "not persisted", "store_grew_gb": 0.01, "lookup_timeouts": 5.0}
    nr = {"platform": "cpu", "arm": "lmcache_remote_server", "status": "not_run", "reason": NASTY}
    return pd.DataFrame([ok, none, nr], columns=COLUMNS)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _write_up(tmp_path_factory.mktemp("latex"))


def test_no_box_runs_off_the_page(built):
    log = built["log"].read_text(errors="replace")
    assert not latexmk.overfull(log, TOLERANCE_PT), "\n".join(latexmk.overfull(log, TOLERANCE_PT))
    assert not latexmk.float_problems(log), "\n".join(latexmk.float_problems(log))


def test_pdf_is_made_by_pdftex_with_numbered_figures_and_tables(built):
    with pymupdf.open(built["pdf"]) as pdf:
        assert pdf.metadata["producer"].startswith("pdfTeX"), pdf.metadata
        assert pdf.metadata["creationDate"] == "" and pdf.metadata["modDate"] == ""
        text = "".join(page.get_text() for page in pdf)
    for n in range(1, 10):
        assert f"Figure {n}:" in text
    assert "Across instances" in text and "not run" in text
    assert "Table 1:" in text and "TTFT median" in text and "(ms)" in text
    assert "ttft_median_ms" not in text  # headers are labels, not column names
    assert "References" in text and "Level Up Coding" in text  # BibTeX ran
    assert "ab" * 32 in text.replace("\n", "")  # the long hash broke across lines, unhyphenated


def test_data_strings_are_escaped(built):
    tex, bib = built["tex"].read_text(), built["bib"].read_text()
    want = latex.escape(NASTY)
    assert want in tex and want in bib
    for raw in ("a_b &", "50% of", "c #1", "{x} ~y"):
        assert raw not in tex
    with pymupdf.open(built["pdf"]) as pdf:
        text = " ".join(" ".join(page.get_text().split()) for page in pdf)
    assert "50% of a_b & c #1 {x} ~y ^z \\ <w> $5 --flag" in text


def test_tables_use_booktabs_and_labels(built):
    tex = built["tex"].read_text()
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") >= 10
    assert r"\colhead{TTFT median\\(ms)}" in tex and r"\colhead{TTFT 95\% CI\\(ms)}" in tex
    assert r"\includegraphics" in tex and r"\label{fig:baseline}" in tex and r"\ref{fig:baseline}" in tex
    # the wide tables of issue 13 with three arms each (stand-in runs) are in the build checked for overfull boxes
    assert r"\label{tab:miss}" in tex and r"\label{tab:pressure}" in tex


def test_the_pdf_is_the_same_when_rebuilt(built, tmp_path):
    again = _write_up(tmp_path)
    assert hashlib.sha256(again["pdf"].read_bytes()).hexdigest() == \
        hashlib.sha256(built["pdf"].read_bytes()).hexdigest()


def test_markdown_tables_use_the_same_labels():
    md = paper.mdtable(pd.DataFrame({"platform": ["h100"], "ttft_median_ms": [12.345]}))
    assert labels.label("ttft_median_ms") == "TTFT median (ms)" and "TTFT median (ms)" in md


def test_table_cells_ranges_and_missing_values():
    df = pd.DataFrame({"arm": ["no_cache"], "n": [20.0], "ttft_ci95_lo_ms": [1.25], "ttft_ci95_hi_ms": [2.5],
                       "e2e_delta_pct": [-3.2], "persisted": [True], "hit_rate": [float("nan")]})
    tex = str(latex.table(df, ["arm", "n", "ttft_ci95_ms", "e2e_delta_pct", "persisted", "hit_rate", "absent"]))
    assert r"no\_cache & 20 & 1.2 to 2.5 & \textminus{}3.2 & yes & -- \\" in tex
    assert tex.splitlines()[0] == r"\begin{tabular}{lrrrlr}"
    assert str(latex.table(pd.DataFrame(), ["arm"])) == r"\emph{(no rows)}"


def test_a_failed_tex_run_fails_with_the_end_of_its_log(tmp_path):
    tex = tmp_path / "broken.tex"
    tex.write_text("\\documentclass{article}\\begin{document}\\undefinedmacro\\end{document}\n")
    with pytest.raises(latexmk.LatexError, match="Undefined control sequence"):
        latexmk.compile_pdf(tex, tmp_path / "broken.pdf")


def test_missing_latexmk_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(latexmk.shutil, "which", lambda name: None)
    with pytest.raises(latexmk.LatexError, match="apt-get install --no-install-recommends latexmk"):
        latexmk.compile_pdf(tmp_path / "x.tex", tmp_path / "x.pdf")


def test_cross_gpu_block_shows_only_the_run_on_different_gpus(built):
    md = built["md"].read_text()
    block = md[md.index("#### Across GPUs of one host"):]
    block = block[:block.index("###", 5)]
    assert "**h200x2 / lmcache_mp, 32,768-token prefixes**, A on GPU 0, B on GPU 1" in block
    assert "saved 2,050 ms" in block and "h200 /" not in block and "Not run" not in block
    assert "Across GPUs of one host" in built["tex"].read_text()


def test_remote_block_shows_its_measured_row_and_the_run_not_run(built):
    md = built["md"].read_text()
    block = md[md.index("### Remote stores"):]
    assert "**h200 / lmcache_redis (redis 7.0.15), 19,968-token prefixes**" in block
    assert "miss / hit 1.92" in block and "the populated prompt was faster, the CI above zero" in block
    assert "reusable tokens (persisted)" in block
    # the counters, not the time, say whether the populated prompts were hits
    served_none = block[block.index("**h200 / lmcache_remote_server"):].split("\n- ")[0]
    assert "**the store served no hits after vLLM's restart** (counters: 0 hit tokens" in served_none
    assert "(hit)" not in served_none and "the populated prompt was slower" in served_none
    assert "LMCache stored 13.09 GB (its log); the store's process grew by 0.01 GB meanwhile" in served_none
    assert "LMCache's lookups timed out 5 times after the restart" in served_none
    assert "timed out" not in block[:block.index("**h200 / lmcache_remote_server")]  # Redis: none counted
    assert "the store served no hits" in built["tex"].read_text()
    assert "**cpu / lmcache_remote_server**: not run" in block


def test_decision_block_shows_issue_13s_rows_in_both_outputs(built):
    md, tex = built["md"].read_text(), built["tex"].read_text()
    block = md[md.index("When does reuse help?"):]
    for text in ("pressure (prefix_repetition)", "pressure (conversation)", "miss (vram_hit)",
                 "chunk 64 vs chunk 256 (lmcache_cpu, the study's best)", "Output tokens/s, change (%)",
                 "without 0.746, with 0.388 s (seed002, rtx4090)", "statistic: mean (ours median)"):
        assert text in block, text
    for text in (r"pressure (prefix\_\allowbreak{}repetition)", r"miss (vram\_\allowbreak{}hit)", "TTFT P99 (ms)",
                 "s002-remote-backends-redis-hit"):
        assert text in tex, text
