"""The DAG reruns only what is stale: checked in a copy of the repository with every output
made up to date by `snakemake --touch` (no server is started)."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from kvreuse import platforms


def smk(cwd, *args):
    r = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def jobs(out: str) -> dict[str, int]:
    table = out.split("Job stats:")[1].split("total")[0] if "Job stats:" in out else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def copy_checkout(repo, dst):
    """A copy of the checkout's files (tracked, and untracked but not ignored) in ``dst``."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (repo / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / f, dst / f)
    return dst


@pytest.fixture(scope="module")
def done_copy(repo, tmp_path_factory):
    dst = copy_checkout(repo, tmp_path_factory.mktemp("dag") / "kvreuse")
    shutil.rmtree(dst / "results", ignore_errors=True)
    out = smk(dst, "-n")
    # benchmark files too: the cost table and the artifact read them
    outputs = sorted({o.strip() for line in re.findall(r"^\s+(?:output|benchmark): (.*)$", out, re.M)
                      for o in line.split(",")})
    for o in outputs:
        p = dst / o
        if o.startswith("resources/models/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
    smk(dst, "--touch", "--cores", "1")  # mtimes in DAG order
    return dst


def test_second_run_does_nothing(done_copy):
    assert "Nothing to be done" in smk(done_copy, "-n")


def test_touching_one_plotting_script_reruns_that_figure_and_the_paper(done_copy):
    script = done_copy / "workflow/scripts/figures/restart.py"
    time.sleep(1.1)
    os.utime(script)
    out = smk(done_copy, "-n")
    assert {k: v for k, v in jobs(out).items() if k != "total"} == {"figure": 1, "paper": 1, "all": 1}
    outputs = " ".join(re.findall(r"^\s+output: (.*)$", out, re.M))
    assert "results/figures/restart.pdf" in outputs
    assert "results/figures/cold_warm.pdf" not in outputs
    smk(done_copy, "--touch", "--cores", "1")


def test_editing_a_table_module_remakes_the_tables_and_what_reads_them_never_a_measurement(done_copy):
    """The package modules a script imports are its rule's inputs (kvreuse.code_deps): a changed
    table module makes its table stale, though the rule's script: file did not change."""
    def edit(module):  # Snakemake (9.18 on) compares an input's checksum, not only its mtime
        time.sleep(1.1)
        path = done_copy / module
        path.write_text(path.read_text() + "\n# edited\n")

    edit("workflow/kvreuse/tables_overhead.py")
    ran = jobs(smk(done_copy, "-n"))
    assert ran.get("table") and ran.get("paper") == 1 and ran.get("figure"), ran
    assert not [j for j in ran if j.startswith("run_") or j in ("model", "lmcache_store")], ran
    smk(done_copy, "--touch", "--cores", "1")
    edit("workflow/kvreuse/plotting.py")  # imported by the figure scripts only
    ran = {k: v for k, v in jobs(smk(done_copy, "-n")).items() if k != "total"}
    assert set(ran) == {"figure", "paper", "all"} and ran["figure"] > 1, ran
    smk(done_copy, "--touch", "--cores", "1")


def test_analysis_code_never_reruns_a_measurement(done_copy):
    time.sleep(1.1)
    for f in ("workflow/scripts/aggregate.py", "workflow/scripts/figures/cold_warm.py",
              "paper/kvreuse.md.j2", "workflow/notebooks/analysis.py"):
        os.utime(done_copy / f)
    out = smk(done_copy, "-n")
    assert not [j for j in jobs(out) if j.startswith("run_") or j == "model"], out
    smk(done_copy, "--touch", "--cores", "1")


def test_a_gpu_platform_without_its_gpu_stops_before_any_job(repo, tmp_path):
    """`-F` of a committed H200 raw file on a machine without an H200: the dry run lists the
    job; the real run stops before any job starts, and the committed files are untouched."""
    if not platforms.missing_gpus(["h200"], platforms.visible_gpus()[0]):
        pytest.skip("this machine has an H200: the run would measure")
    dst = copy_checkout(repo, tmp_path / "kvreuse")
    raw = dst / "results/raw/h200"

    def committed():
        return {p.relative_to(raw): p.read_bytes() for p in sorted(raw.rglob("*")) if p.is_file()}

    before = committed()
    target = "results/raw/h200/baseline/no_cache.jsonl"
    assert (dst / target).is_file() and len(before) > 2
    ask = ["-F", target, "--config", 'run_platforms=["h200"]']
    assert jobs(smk(dst, "-n", *ask))["run_baseline_h200"] == 1  # a dry run still works
    r = subprocess.run([sys.executable, "-m", "snakemake", *ask, "--cores", "1"], cwd=dst,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "run_platforms asks for h200 on this machine, but h200 needs an H200 GPU" in out, out
    assert "Error in rule" not in out and not (dst / "results/logs").exists(), out  # no job ran
    assert not (dst / "resources/models").exists(), out
    assert committed() == before
