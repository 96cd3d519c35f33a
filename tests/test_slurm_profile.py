"""profiles/pace: what reaches sbatch for each GPU class, through snakemake and the real
SLURM executor plugin, with fake SLURM commands on PATH (no cluster needed); and, marked
`slurm`, the same sbatch lines accepted and run by a real SLURM (.ci/slurm-e2e.sh up)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import snakemake_executor_plugin_slurm  # noqa: F401  (envs/requirements-slurm.txt)
import yaml

from kvreuse import config as kc
from slurmkit import GPU_CLASSES, MULTI_GPU_CLASSES, REPO, link_checkout

FIRST_MINUTES = {"baseline": 30, "cold_warm": 30, "restart": 45, "prefix_sweep": 60, "multiturn": 30,
                 "serving": 60, "random_overhead": 45, "cross_instance": 30, "remote": 30,
                 "multiturn_long": 30, "chunk_sweep": 30, "pressure": 30, "miss": 45}

# One script stands in for every SLURM command the plugin calls. sbatch records its argv and
# answers a job id; squeue reports every job RUNNING except the first one of the h100 class,
# which hit its time limit.
FAKE_SLURM = """\
import json, os, sys
tool = os.path.basename(sys.argv[0])
record = os.path.join(os.environ["FAKE_SLURM_DIR"], "sbatch.jsonl")
if tool == "sbatch":
    with open(record, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    print(sum(1 for _ in open(record)))
elif tool == "squeue":
    timed_out = False
    for i, line in enumerate(open(record) if os.path.exists(record) else [], 1):
        first = not timed_out and "_h100_wildcards_" in line
        timed_out = timed_out or first
        print(f"{i}|{'TIMEOUT' if first else 'RUNNING'}")
elif tool == "scontrol":
    print("MinJobAge               = 600 sec")
sys.exit(1 if tool in ("sacct", "sacctmgr") else 0)
"""


def load_profile(env: dict | None = None) -> dict:
    from snakemake.profiles import ProfileConfigFileParser

    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        with open(REPO / "profiles/pace/config.yaml") as f:
            return ProfileConfigFileParser().parse(f)
    finally:
        os.environ.clear()
        os.environ.update(old)


def sbatch_options(argv: list[str]) -> dict:
    """sbatch's argv as {option: value} (flags map to True), without the wrapped command."""
    opts, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--wrap"):
            break
        if "=" in a:
            k, v = a.split("=", 1)
            opts[k] = v
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            opts[a] = argv[i + 1]
            i += 1
        else:
            opts[a] = True
        i += 1
    return opts


def rule_of(opts: dict) -> str:
    return opts["--comment"].removeprefix("rule_").split("_wildcards_")[0]


def run_pace(tmp: Path, platforms: list[str], targets: list[str], done, setup_done=True) -> dict:
    """Run snakemake with the pace profile against fake SLURM commands until done(rules)
    holds for the rules submitted so far; return the sbatch argv lists in submission order."""
    work, fake = link_checkout(tmp / "work"), tmp / "bin"
    fake.mkdir()
    if setup_done:  # model and LMCache preflights made: the run jobs come first
        models = yaml.safe_load((REPO / "config.yaml").read_text())["platforms"]
        for p in platforms:
            (work / f"resources/models/{models[p]['model']}").mkdir(parents=True, exist_ok=True)
            (work / f"resources/lmcache/{p}").mkdir(parents=True)
            (work / f"resources/lmcache/{p}/preflight.json").write_text("{}\n")
    (fake / "fake_slurm.py").write_text(f"#!{sys.executable}\n" + FAKE_SLURM)
    (fake / "fake_slurm.py").chmod(0o755)
    for tool in ("sbatch", "squeue", "scontrol", "sinfo", "sacct", "sacctmgr", "sshare", "scancel"):
        (fake / tool).symlink_to(fake / "fake_slurm.py")
    (tmp / "study.yaml").write_text(yaml.safe_dump({"run_platforms": platforms}))
    (tmp / "cluster.yaml").write_text("software_deployment: null\n")  # PACE otherwise
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(tmp),
           "KVREUSE_CLUSTER": str(tmp / "cluster.yaml"), "KVREUSE_SLURM_ACCOUNT": "gts-test",
           "PYTHONPATH": os.pathsep.join([str(REPO / "workflow"), os.environ.get("PYTHONPATH", "")])}
    env.pop("KVREUSE_SLURM_QOS", None)
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/pace",
           "--configfile", str(tmp / "study.yaml"), "--rerun-triggers", "mtime",
           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
           *targets]
    record = tmp / "sbatch.jsonl"

    def submitted() -> list[list[str]]:
        return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []

    with open(tmp / "snakemake.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if done([rule_of(sbatch_options(a)) for a in submitted()]):
                    break
                time.sleep(0.5)
            time.sleep(1)  # nothing more may be submitted while the running jobs hold the caps
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (tmp / "snakemake.log").read_text()
    assert submitted(), f"nothing reached sbatch:\n{log[-4000:]}"
    return {"argv": submitted(), "log": log}


@pytest.fixture(scope="module")
def submissions(tmp_path_factory) -> dict:
    """The four-class study (every run job; setup already done) up to its first wave."""
    return run_pace(tmp_path_factory.mktemp("pace"), list(GPU_CLASSES), ["measure"],
                    done=lambda rules: len(rules) >= 8)


@pytest.mark.parametrize("platform", list(GPU_CLASSES))
def test_each_gpu_class_reaches_its_partition_with_one_gpu_of_its_type(submissions, platform):
    partition, gpu = GPU_CLASSES[platform]
    mine = [sbatch_options(a) for a in submissions["argv"]
            if rule_of(sbatch_options(a)).endswith(f"_{platform}")]
    assert len(mine) >= 2, submissions["log"][-4000:]
    for opts in mine:
        experiment = rule_of(opts).removeprefix("run_").removesuffix(f"_{platform}")
        assert opts["-p"] == partition
        assert opts["--gpus"] == f"{gpu}:1"  # one GPU of the class: never shared (SLURM GRES)
        assert opts["-A"] == "gts-test"
        assert opts["--mem"] == "64000" and opts["--cpus-per-task"] == "8"
        assert opts["--requeue"] is True  # preempted jobs go back to the queue
        assert int(opts["-t"]) in (FIRST_MINUTES[experiment], 2 * FIRST_MINUTES[experiment])
        assert "--gres" not in opts


def test_eight_jobs_fan_out_two_per_gpu_class(submissions):
    first_wave = [sbatch_options(a)["-p"] for a in submissions["argv"][:8]]
    assert Counter(first_wave) == {p: 2 for p, _ in GPU_CLASSES.values()}, first_wave


def test_setup_model_on_the_cpu_partition_lmcache_preflight_on_each_class(tmp_path):
    targets = ["resources/models/llama-3.1-8b"] + [f"resources/lmcache/{p}/preflight.json" for p in GPU_CLASSES]
    result = run_pace(tmp_path, list(GPU_CLASSES), targets, done=lambda rules: len(rules) >= 5,
                      setup_done=False)
    jobs = {opts["--comment"].removeprefix("rule_"): opts for opts in map(sbatch_options, result["argv"])}
    model = jobs["model_wildcards_llama-3.1-8b"]
    assert model["-p"] == "cpu" and "--gpus" not in model and model["--cpus-per-task"] == "4"
    for platform, (partition, gpu) in GPU_CLASSES.items():
        preflight = jobs[f"lmcache_store_wildcards_{platform}"]
        assert preflight["-p"] == partition and preflight["--gpus"] == f"{gpu}:1"


def test_a_timed_out_job_is_resubmitted_with_twice_the_runtime(tmp_path):
    """The fake squeue says the first h100 job hit its time limit; the retry gets 2x the time."""
    result = run_pace(tmp_path, ["h100"], ["results/raw/h100/restart/apc.jsonl"],
                      done=lambda rules: len(rules) >= 2)
    assert [int(sbatch_options(a)["-t"]) for a in result["argv"]] == [45, 90], result["log"][-4000:]
    assert "SLURM status is: 'TIMEOUT'" in result["log"]


def test_every_run_rule_of_every_platform_has_a_partition():
    """A new experiment or platform without an entry in the profile fails here, not on the cluster."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    entries = {}
    for item in load_profile()["set-resources"]:
        rule, assignment = item.split(":", 1)
        key, value = assignment.split("=", 1)
        entries.setdefault(rule, {})[key] = value
    for platform in config["platforms"]:
        for experiment in kc.EXPERIMENTS:
            assert "slurm_partition" in entries[f"run_{experiment}_{platform}"]
    assert entries["run_baseline_cpu"]["slurm_partition"] == "'cpu'"
    assert "gpu" not in entries["run_baseline_cpu"]
    assert "slurm_partition" not in entries["model"]  # the default: the CPU partition


def test_defaults_account_qos_and_overlay(tmp_path):
    profile = load_profile({"KVREUSE_SLURM_ACCOUNT": "gts-pi", "KVREUSE_SLURM_QOS": "embers"})
    assert "slurm_account='gts-pi'" in profile["default-resources"]
    assert "slurm_partition='cpu'" in profile["default-resources"]
    assert profile["slurm-qos"] == "embers" and profile["slurm-requeue"] == "True"
    assert profile["resources"] == ([f"{p}_jobs=2" for p in ("h200", "h100", "a100", "l40s", "cpu")]
                                    + [f"{p}_jobs=1" for p in MULTI_GPU_CLASSES])
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text("platforms: {h100: {partition: gpu, gpu: nvidia_h100}}\ncpu_partition: short\n")
    profile = load_profile({"KVREUSE_CLUSTER": str(overlay)})
    assert "run_cold_warm_h100:slurm_partition='gpu'" in profile["set-resources"]
    assert "run_cold_warm_h100:gpu_model='nvidia_h100'" in profile["set-resources"]
    assert "run_cold_warm_h200:slurm_partition='gpu-h200'" in profile["set-resources"]
    assert "slurm_partition='short'" in profile["default-resources"]


def test_the_profile_has_one_entry_per_platform_of_the_one_list(tmp_path):
    """profiles/pace reads kvreuse.platforms: its table covers every platform, and an overlay
    that names an unknown one (a typo) stops at load, before any job."""
    from kvreuse.platforms import NAMES, needs_gpu

    assert set(GPU_CLASSES) | set(MULTI_GPU_CLASSES) == {p for p in NAMES if needs_gpu(p)}
    partitions = {item.split(":", 1)[0].removeprefix("run_baseline_"): item.split("=", 1)[1]
                  for item in load_profile()["set-resources"]
                  if item.startswith("run_baseline_") and ":slurm_partition=" in item}
    assert set(partitions) == set(NAMES)
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text("platforms: {h10: {partition: gpu, gpu: H100, cpus: 8, mem_mb: 1000, max_jobs: 1}}\n")
    with pytest.raises(Exception, match=r"unknown: h10 \(a typo\? check KVREUSE_CLUSTER\)"):
        load_profile({"KVREUSE_CLUSTER": str(overlay)})


def dry_run_jobs(tmp: Path, platforms: list[str]) -> list[dict]:
    """`snakemake --profile profiles/pace -n` for ``platforms`` in a scratch copy of the
    checkout: snakemake's own job listing, parsed by the dry-run benchmark."""
    sys.path.insert(0, str(REPO / "tests/benchmarks"))
    try:
        from pace_dry_run import jobs
    finally:
        sys.path.pop(0)
    work = link_checkout(tmp / "work")
    names = ",".join(platforms)
    env = {**os.environ, "KVREUSE_SLURM_ACCOUNT": "gts-test",
           "PYTHONPATH": os.pathsep.join([str(REPO / "workflow"), os.environ.get("PYTHONPATH", "")])}
    env.pop("KVREUSE_CLUSTER", None)
    out = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/pace", "-n",
                          "--config", f"run_platforms=[{names}]", f"report_platforms=[{names}]"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return jobs(out.stdout + out.stderr)


def test_dry_run_shows_the_multi_gpu_jobs_with_their_gpu_count_and_partition(tmp_path):
    """The 70B platforms' run jobs ask for N H200 of one node in the H200 partition (the plugin
    turns gpu=N, gpu_model=H200, nodes=1 into --gpus=H200:N --nodes=1), only for the
    experiments they run; their setup goes where a single GPU's does."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    listed = dry_run_jobs(tmp_path, list(MULTI_GPU_CLASSES))
    for platform, (partition, gpu, count) in MULTI_GPU_CLASSES.items():
        runs = [j for j in listed if j["rule"].startswith("run_") and j["rule"].endswith(f"_{platform}")]
        wanted = config["platforms"][platform]["run_experiments"]
        assert {j["rule"].removeprefix("run_").removesuffix(f"_{platform}") for j in runs} == set(wanted)
        restart_arms = set(config["platforms"][platform]["experiments"]["restart"]["arms"])
        assert {j["wildcards"]["arm"] for j in runs if j["rule"] == f"run_restart_{platform}"} == restart_arms
        for j in runs:
            res = j["resources"]
            assert (res["slurm_partition"], res["gpu"], res["gpu_model"], res["nodes"]) == (
                partition, str(count), gpu, "1"), (j["rule"], res)
            assert config["platforms"][platform]["server"]["tensor_parallel"] == count
        preflight = next(j for j in listed if j["rule"] == "lmcache_store"
                         and j["wildcards"]["platform"] == platform)
        assert preflight["resources"]["slurm_partition"] == partition
    # reuse across GPUs: h200x2's cross_instance job asks for both H200 of one node (A on one, B
    # on the other, each at tensor_parallel 1 with the 8B, which one H200 holds)
    cross = [j for j in listed if j["rule"] == "run_cross_instance_h200x2"]
    assert [j["wildcards"]["arm"] for j in cross] == ["lmcache_mp"]
    res = cross[0]["resources"]
    assert (res["slurm_partition"], res["gpu"], res["gpu_model"], res["nodes"]) == ("gpu-h200", "2", "H200", "1")
    model = [j for j in listed if j["rule"] == "model"]
    assert sorted(j["wildcards"]["model"] for j in model) == ["llama-3.1-70b", "llama-3.1-8b"]
    assert all(m["resources"]["slurm_partition"] == "cpu" and "gpu" not in m["resources"] for m in model)


def test_a_multi_gpu_job_reaches_sbatch_with_its_gpus_on_one_node(tmp_path):
    """What the executor plugin hands sbatch for an h200x4 job."""
    result = run_pace(tmp_path, ["h200x4"], ["results/raw/h200x4/restart/lmcache_fs.jsonl"],
                      done=lambda rules: len(rules) >= 1)
    opts = sbatch_options(result["argv"][0])
    assert opts["-p"] == "gpu-h200" and opts["--gpus"] == "H200:4" and opts["--nodes"] == "1", opts


def test_the_profile_refuses_a_gpu_count_other_than_the_platforms(tmp_path):
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text("platforms: {h200x4: {gpus: 2}}\n")
    with pytest.raises(Exception, match=r"h200x4: gpus 2, kvreuse.platforms 4"):
        load_profile({"KVREUSE_CLUSTER": str(overlay)})


def test_the_ci_overlay_loads_the_cpu_platform_standing_in_for_a_gpu_job():
    """.ci/slurm-e2e.sh runs the CPU pipeline as an H100 job (one fake GPU): the GPU-count check
    applies to GPU platforms only, so the overlay the real-SLURM check uses must load."""
    profile = load_profile({"KVREUSE_CLUSTER": str(REPO / ".ci/slurm/cluster.yaml")})
    for resource in ("gpu=1", "gpu_model='H100'", "nodes=1", "slurm_partition='gpu-h100'"):
        assert f"run_cold_warm_cpu:{resource}" in profile["set-resources"], resource


def test_aggregation_figures_and_paper_are_local_rules():
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                          snakefile=REPO / "Snakefile", workdir=REPO)
        workflow = wf._workflow  # loads the Snakefile
        # local: declared so, or with nothing to run (all, measure)
        local = {r.name for r in workflow.rules if r.name in workflow._localrules or r.norun}
    assert local == {"all", "measure", "table", "claims", "decision", "figure", "notebook", "paper", "artifact"}


def slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    return out.returncode == 0 and {"gpu-h100", "gpu-h200", "gpu-a100", "gpu-l40s"} <= {
        p.rstrip("*") for p in out.stdout.split()}


@pytest.mark.slurm
@pytest.mark.skipif(not slurm_up(), reason="no SLURM with the pace partitions (.ci/slurm-e2e.sh up)")
def test_real_slurm_runs_each_class_in_its_partition_on_its_gpu(submissions, tmp_path):
    """The plugin's sbatch line for each class, its wrapped command swapped for a probe."""
    first = {}
    for argv in submissions["argv"]:
        opts = sbatch_options(argv)
        first.setdefault(rule_of(opts).rsplit("_", 1)[1], argv)
    jobs = {}
    for platform, argv in first.items():
        options = argv[: next(i for i, a in enumerate(argv) if a.startswith("--wrap"))]
        opts = sbatch_options(options)
        swap = {opts["-A"]: "ci", opts["--mem"]: "100", "--cpus-per-task=8": "--cpus-per-task=1",
                opts["--output"]: str(tmp_path / f"{platform}.out")}  # fits the CI's one node
        options = [swap.get(a, a) for a in options]
        probe = "echo $SLURM_JOB_PARTITION $CUDA_VISIBLE_DEVICES"
        out = subprocess.run(["sbatch", *options, f"--wrap={probe}"], capture_output=True, text=True)
        assert out.returncode == 0, (shlex.join(options), out.stderr)
        jobs[platform] = out.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all((tmp_path / f"{p}.out").exists() for p in jobs):
        time.sleep(1)
    for platform, job in jobs.items():
        partition, gpu = GPU_CLASSES[platform]
        show = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert f"Partition={partition}" in show and f"TresPerJob=gres:gpu:{gpu}:1" in show, show
        seen_partition, gpu_index = (tmp_path / f"{platform}.out").read_text().split()
        assert seen_partition == partition and gpu_index.isdigit()  # the job got a GPU of its own
