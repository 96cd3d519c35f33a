"""Benchmark: `snakemake --profile profiles/pace -n` on the full study (the four GPU classes,
every experiment and arm), as a user checks it before `-j 8`.

Runs the dry run REPEAT times in a scratch copy of the checkout (links to it, with empty
results/ and resources/, so that every job is listed, not only the stale ones), times each,
and checks from snakemake's own job listing that every job goes where profiles/pace says:
run_<experiment>_<platform> to its class's partition with exactly one GPU of its type,
`model` to the CPU partition, `lmcache_store` to its platform's partition with its GPU, and
tables, figures, notebook and write-up as local rules. Writes a JSON report (default
results/benchmarks/pace_dry_run.json) with the times against the target (median under 5 s);
exits 1 if a job is misplaced (the time is reported, not gated: CI runs this too).

    .venv/bin/python tests/benchmarks/pace_dry_run.py [--repeat 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import snakemake

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "workflow"), str(REPO / "tests")]
from kvreuse import provenance  # noqa: E402
from slurmkit import GPU_CLASSES as CLASSES, MULTI_GPU_CLASSES, link_checkout  # noqa: E402

TARGET_S = 5.0
JOB_HEAD = re.compile(r"^(local)?rule (\S+):$")


def jobs(listing: str) -> list[dict]:
    """snakemake -n's job blocks as [{rule, local, wildcards, resources}]."""
    out, cur = [], None
    for line in listing.splitlines():
        m = JOB_HEAD.match(line.strip()) if not line.startswith(" ") else None
        if m:
            cur = {"rule": m.group(2), "local": bool(m.group(1)), "wildcards": {}, "resources": {}}
            out.append(cur)
        elif cur is not None and line.startswith("    ") and ":" in line:
            key, _, value = line.strip().partition(": ")
            if key in ("wildcards", "resources"):
                cur[key] = dict(kv.split("=", 1) for kv in value.split(", ") if "=" in kv)
    return out


def local_rules() -> set[str]:
    """Rules marked `localrule: True` in workflow/rules/*.smk (a dry run does not say which)."""
    names = set()
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            m = re.match(r"rule (\w+):", block)
            if m and re.search(r"^\s+localrule:\s*True", block, flags=re.M):
                names.add(m.group(1))
    return names


def misplaced(job_list: list[dict]) -> list[str]:
    """Every job that is not where profiles/pace says it belongs, with why."""
    bad, local = [], local_rules()
    for j in job_list:
        j["local"] = j["local"] or j["rule"] in local
        rule, res = j["rule"], j["resources"]
        m = re.fullmatch(r"run_\w+_(h200x[248]|h200|h100|a100|l40s)", rule)
        if m and m.group(1) in MULTI_GPU_CLASSES:  # several GPUs of one node
            part, gpu, n = MULTI_GPU_CLASSES[m.group(1)]
            want = {"slurm_partition": part, "gpu": str(n), "gpu_model": gpu, "nodes": "1"}
        elif m:
            part, gpu = CLASSES[m.group(1)]
            want = {"slurm_partition": part, "gpu": "1", "gpu_model": gpu}
        elif rule == "lmcache_store":
            part, gpu = {**CLASSES, **MULTI_GPU_CLASSES}[j["wildcards"]["platform"]][:2]
            want = {"slurm_partition": part, "gpu": "1", "gpu_model": gpu}
        elif rule == "model":
            want = {"slurm_partition": "cpu"}
        elif rule in ("all", "measure"):
            continue
        else:  # aggregation, figures, notebook, write-up: where snakemake runs
            if not j["local"]:
                bad.append(f"{rule}: should be a local rule")
            continue
        got = {k: res.get(k) for k in want}
        if got != want:
            bad.append(f"{rule} {j['wildcards']}: {got} != {want}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "results/benchmarks/pace_dry_run.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="kvreuse-dry-run-") as tmp:
        work = link_checkout(Path(tmp))
        classes = ",".join(CLASSES)
        cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/pace", "-n",
               "--config", f"run_platforms=[{classes}]", f"report_platforms=[{classes}]"]
        env = {**os.environ, "KVREUSE_SLURM_ACCOUNT": os.environ.get("KVREUSE_SLURM_ACCOUNT", "bench"),
               "PYTHONPATH": os.pathsep.join([str(REPO / "workflow"), os.environ.get("PYTHONPATH", "")])}
        times, listing = [], ""
        for i in range(args.repeat):
            t0 = time.perf_counter()
            p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
            times.append(round(time.perf_counter() - t0, 3))
            if p.returncode:
                print(p.stdout[-3000:], p.stderr[-3000:], sep="\n", file=sys.stderr)
                print(f"pace_dry_run: the dry run failed (exit {p.returncode}); see above", file=sys.stderr)
                return 1
            listing = p.stdout + p.stderr
            print(f"pace_dry_run: run {i + 1}/{args.repeat}: {times[-1]:.2f} s", flush=True)

    job_list = jobs(listing)
    bad = misplaced(job_list)
    per_partition = Counter(j["resources"].get("slurm_partition", "local") if not j["local"] else "local"
                            for j in job_list if j["rule"] not in ("all", "measure"))
    median = statistics.median(times)
    report = {
        "benchmark": "snakemake --profile profiles/pace -n, full study",
        "command": " ".join(cmd[1:]),
        "gpu_classes": list(CLASSES),
        "jobs": len(job_list),
        "run_jobs": sum(j["rule"].startswith("run_") for j in job_list),
        "jobs_per_partition": dict(sorted(per_partition.items())),
        "misplaced": bad,
        "seconds": times,
        "median_s": median,
        "max_s": max(times),
        "target_s": TARGET_S,
        "target_met": median < TARGET_S,
        "snakemake": snakemake.__version__,
        "python": host.python_version(),
        "cpus": os.cpu_count(),
        "machine": host.machine(),
        "git_commit": provenance.git_commit(REPO),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"pace_dry_run: {report['jobs']} jobs ({report['run_jobs']} run jobs) per partition "
          f"{report['jobs_per_partition']}; median {median:.2f} s, max {max(times):.2f} s "
          f"(target < {TARGET_S:.0f} s: {'met' if report['target_met'] else 'NOT met'}); "
          f"misplaced: {len(bad)}; report {args.out}")
    for b in bad:
        print(f"pace_dry_run: misplaced: {b}", file=sys.stderr)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
