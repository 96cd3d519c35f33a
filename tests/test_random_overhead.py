"""random_overhead's alternating design without a server: the order of server runs (a stand-in
context), arms that cannot run here, the output length, the DAG (one job per platform, files
per arm), the two-level bootstrap and the table, the cost of a shared job."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kvreuse import aggregate, alternating, dag, experiments, results
from kvreuse.accounting import JobLogs
from kvreuse.config import check, prompt_tokens_needed, server_config
from kvreuse.errors import ConfigError

PARAMS = {"n_requests": 3, "repeats": 1, "server_runs": 3, "system_tokens": 4, "context_tokens": 4,
          "warmup_requests": 1}


# -- the order of server runs, on stand-in servers and recorder ------------------------------
class FakeServers:
    def __init__(self, arm, run, events):
        self.arm, self.run, self.events = arm, run, events

    def start(self, name="main", *, connector=True):
        self.events.append(("start", self.arm, self.run))

    def stop(self, *names, lmcache_server=False):
        self.events.append(("stop", self.arm, self.run, lmcache_server))

    def target(self, name="main"):
        return None


class FakeRecorder:
    """Books each phase with its fields and keeps its prompts; no request."""

    def __init__(self, meta, events):
        self.meta, self.events, self.prompts, self.records = meta, events, {}, []

    async def phase(self, target, kind, prompts, *, name=None, **fields):
        name = name or results.phase_name(kind)
        self.meta.add_phase(name, results.Phase(kind=kind, n_requests=len(prompts), wall_s=0.0, counters={},
                                                **fields))
        self.prompts[name] = prompts
        self.events.append(("phase", self.meta.arm, name))
        return [SimpleNamespace(output_token_ids=[1]) for _ in prompts]


def a_meta(arm, platform="h200"):
    return results.RunMeta(status="ok", platform=platform, experiment="random_overhead", arm=arm,
                           arm_config={}, params={}, accelerator={}, versions={}, model={}, server={},
                           client={}, config_hash=None, git_commit=None, started_at="",
                           finished_at=None, phases={})


@dataclasses.dataclass
class FakeArm:
    """An arm as kvreuse.experiments.alternate sees it: a name, a spec and server_run(i)."""

    name: str
    events: list

    def __post_init__(self):
        self.spec = SimpleNamespace(experiment="random_overhead", params=PARAMS, arm={})
        self.recorder = FakeRecorder(a_meta(self.name), self.events)

    @property
    def meta(self):
        return self.recorder.meta

    def resume(self, i):  # nothing kept from an earlier start of the job
        return False

    def keep(self, i, phases_before, n_records_before):
        self.events.append(("keep", self.name, i))

    @contextlib.contextmanager
    def server_run(self, i):
        self.events.append(("open", self.name, i))
        yield experiments.Context(self.spec, SimpleNamespace(lmcache=None), FakeServers(self.name, i, self.events),
                                  self.recorder, None,
                                  SimpleNamespace(tokens=lambda name, n: [hash(name) % 1000] * n))
        self.events.append(("close", self.name, i))


def test_arms_alternate_across_fresh_server_runs_with_the_same_prompts():
    events = []
    arms = [FakeArm("apc", events), FakeArm("lmcache_cpu", events)]
    asyncio.run(experiments.alternate(arms, 3, experiments.SERVER_RUNS["random_overhead"]))
    opened = [(e[1], e[2]) for e in events if e[0] == "open"]
    assert opened == [("apc", 0), ("lmcache_cpu", 0), ("apc", 1), ("lmcache_cpu", 1),
                      ("apc", 2), ("lmcache_cpu", 2)]  # A B A B A B
    # each server run: a fresh start, one warm-up, the measured pass, a stop (LMCache server too)
    first = events[:events.index(("close", "apc", 0)) + 2]
    assert first == [("open", "apc", 0), ("start", "apc", 0), ("phase", "apc", "warmup_run0"),
                     ("phase", "apc", "repeat_run0_0"), ("stop", "apc", 0, True), ("close", "apc", 0),
                     ("keep", "apc", 0)]  # each finished server run is kept for a restarted job
    for arm in arms:
        phases = arm.recorder.meta.phases
        measured = {n: p for n, p in phases.items() if p.kind == "repeat"}
        assert [(p.server_run, p.repeat) for p in measured.values()] == [(0, 0), (1, 0), (2, 0)]
        assert [p.server_run for p in phases.values() if p.kind == "warmup"] == [0, 1, 2]
        prompts = [arm.recorder.prompts[n] for n in measured]
        assert prompts[0] == prompts[1] == prompts[2] and len(prompts[0]) == 3  # the same, seeded
        assert len(prompts[0][0]) == PARAMS["system_tokens"] + PARAMS["context_tokens"]
        # the warm-up is unrelated to the measured prompts
        assert arm.recorder.prompts["warmup_run0"][0] not in prompts[0]
    assert arms[0].recorder.prompts["repeat_run0_0"] == arms[1].recorder.prompts["repeat_run0_0"]


def test_no_server_run_starts_that_the_time_budget_would_cut_off(monkeypatch):
    events = []
    arms = [FakeArm("apc", events), FakeArm("lmcache_cpu", events)]
    # the runner's deadline has passed: the first server run gives the job its length, and the
    # next one is not started (its finished runs stay kept for the next step)
    monkeypatch.setenv(experiments.server_runs.DEADLINE_ENV, str(time.time() - 1))
    with pytest.raises(experiments.TimeBudgetExhausted, match="server run 1 of 3 of arm lmcache_cpu not started"):
        asyncio.run(experiments.alternate(arms, 3, experiments.SERVER_RUNS["random_overhead"]))
    assert [(e[1], e[2]) for e in events if e[0] == "open"] == [("apc", 0)]
    assert ("keep", "apc", 0) in events
    # far from the deadline: every run
    events.clear()
    arms = [FakeArm("apc", events), FakeArm("lmcache_cpu", events)]
    monkeypatch.setenv(experiments.server_runs.DEADLINE_ENV, str(time.time() + 3600))
    asyncio.run(experiments.alternate(arms, 2, experiments.SERVER_RUNS["random_overhead"]))
    assert len([e for e in events if e[0] == "open"]) == 4
    monkeypatch.setenv(experiments.server_runs.DEADLINE_ENV, "soon")
    with pytest.raises(ValueError, match="epoch second expected"):
        experiments.server_runs.budget_left_s()


def test_schedule_is_round_robin():
    assert alternating.schedule(["a"], 3) == [(0, "a"), (1, "a"), (2, "a")]
    assert alternating.schedule(["a", "b", "c"], 2) == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]


# -- arms that cannot run here ---------------------------------------------------------------
def a_spec(config, tmp_path, arm, repo):
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "kvreuse-model.json").write_text(json.dumps({"name": "tiny-llama", "weights": "random"}))
    return experiments.RunSpec(
        platform="cpu", experiment="random_overhead", arm_name=arm, arm=config["arms"][arm],
        params=config["experiments"]["random_overhead"], model_name="tiny-llama",
        model=config["models"]["tiny-llama"], model_dir=model_dir,
        server=server_config(config, "cpu"), client=config["client"],
        out_jsonl=tmp_path / "raw" / "cpu" / "random_overhead" / f"{arm}.jsonl",
        log_dir=tmp_path / "logs" / arm, config_hash="0" * 16, repo_dir=repo,
        lmcache_dir=tmp_path / "lmcache" / "cpu")


def test_an_arm_that_cannot_run_is_written_as_not_run_and_the_others_still_run(config, tmp_path, repo):
    specs = [a_spec(config, tmp_path, "apc", repo), a_spec(config, tmp_path, "lmcache_cpu", repo)]
    arms = experiments.prepare(specs, has_cuda=False)
    assert [a.name for a in arms] == ["apc"]  # only apc alternates (with itself): 3 runs
    assert arms[0].meta.params["server_runs"] == 3 and not specs[0].out_jsonl.exists()
    nr = specs[1].out_jsonl
    assert nr.read_text() == ""
    meta = results.read_meta(results.meta_path(nr))
    assert meta.status == "not_run" and meta.reason == "LMCache needs CUDA" and meta.arm == "lmcache_cpu"
    assert not (tmp_path / "lmcache").exists()  # no store made for an arm that does not run


# -- a job cut off after some server runs and started again ------------------------------
class CutOff(Exception):
    pass


def fake_server_runs(arm, opened, cut_at=None):
    """``arm.server_run`` on stand-in servers: books a phase and a record per server run (no
    request), records a start and a stop; raises CutOff when server run ``cut_at`` opens."""
    @contextlib.contextmanager
    def server_run(i):
        if i == cut_at:
            raise CutOff(f"budget reached at server run {i}")
        opened.append((arm.name, i))
        arm.starts.append({"process": "vllm", "at": f"t{i}", "startup_s": 1.0, "server_run": i})
        yield SimpleNamespace(spec=arm.spec)
        arm.stops.append({"process": "vllm", "at": f"t{i}", "returncode": 0, "server_run": i})
    return server_run


async def book_one(c, p, i, *, arms):
    arm = next(a for a in arms if a.spec is c.spec)
    name = results.phase_name("repeat", f"run{i}", 0)
    arm.meta.add_phase(name, results.Phase(kind="repeat", n_requests=1, wall_s=0.1, counters={"x": 1.0},
                                           server_run=i, repeat=0))
    arm.recorder.records.append(results.RequestRecord(
        platform="cpu", experiment="random_overhead", arm=arm.name, phase=name, phase_kind="repeat", seq=0,
        prompt_tokens=8, cached_tokens=0, output_tokens=2, ttft_ms=10.0 + i, itl_ms=[1.0], e2e_ms=12.0,
        error=None, server_run=i))


def test_a_job_started_again_takes_the_server_runs_it_kept_and_measures_only_the_rest(config, tmp_path, repo):
    spec = a_spec(config, tmp_path, "apc", repo)

    def start(cut_at=None, spec=spec):
        arms, opened = experiments.prepare([spec], has_cuda=False), []
        for a in arms:
            a.server_run = fake_server_runs(a, opened, cut_at)
        one = lambda c, p, i: book_one(c, p, i, arms=arms)  # noqa: E731
        try:
            asyncio.run(experiments.alternate(arms, 3, one))
        except CutOff:
            pass
        return arms[0], opened

    arm, opened = start(cut_at=2)  # cut off in the third server run
    assert opened == [("apc", 0), ("apc", 1)]
    kept = sorted(p.name for p in experiments.ArmRuns.kept_dir(spec).iterdir())
    assert kept == ["apc.run0.json", "apc.run1.json"]

    arm, opened = start()  # started again: only the third server run is measured
    assert opened == [("apc", 2)]
    assert [p.server_run for p in arm.meta.phases.values()] == [0, 1, 2]
    assert [r.ttft_ms for r in arm.recorder.records] == [10.0, 11.0, 12.0]
    assert [("resumed_from" in s, s["server_run"]) for s in arm.starts] == [(True, 0), (True, 1), (False, 2)]
    assert all("resumed_from" in s for s in arm.stops[:2]) and "resumed_from" not in arm.stops[2]

    # kept by other code or config: deleted and measured again
    for p in experiments.ArmRuns.kept_dir(spec).iterdir():
        p.unlink()
    start(cut_at=1)
    other = dataclasses.replace(spec, config_hash="1" * 16)
    arm, opened = start(spec=other)
    assert opened == [("apc", 0), ("apc", 1), ("apc", 2)]


def start_three_server_runs(spec, cut_at=None):
    """One arm's job of three server runs on stand-ins, cut off before run ``cut_at`` if given:
    (the arm, the server runs it opened)."""
    arms, opened = experiments.prepare([spec], has_cuda=False), []
    for a in arms:
        a.server_run = fake_server_runs(a, opened, cut_at)
    try:
        asyncio.run(experiments.alternate(arms, 3, lambda c, p, i: book_one(c, p, i, arms=arms)))
    except CutOff:
        pass
    return arms[0], opened


def test_runs_kept_by_another_commit_are_taken_only_where_the_campaign_names_it(config, tmp_path, repo,
                                                                              monkeypatch):
    first = a_spec(config, tmp_path, "apc", repo)
    start = start_three_server_runs
    monkeypatch.setenv("KVREUSE_GIT_COMMIT", "a" * 40)
    start(first, cut_at=2)  # two server runs kept by the first commit
    monkeypatch.setenv("KVREUSE_GIT_COMMIT", "b" * 40)  # the runner changed since
    arm, opened = start(first, cut_at=2)
    assert opened == [("apc", 0), ("apc", 1)]  # not named: measured again (and kept anew)
    monkeypatch.setenv("KVREUSE_GIT_COMMIT", "c" * 40)
    monkeypatch.setenv(experiments.server_runs.RESUME_COMMITS_ENV, f"{'b' * 40} c0ffee")
    arm, opened = start(first)
    assert opened == [("apc", 2)]  # named: taken, and said so
    assert [s.get("resumed_commit") for s in arm.starts] == [f"{'b' * 40} (copy)"] * 2 + [None]
    assert arm.meta.git_commit == f"{'c' * 40} (copy)"


def test_runs_kept_on_another_gpu_of_the_same_model_are_taken_only_where_the_campaign_says_so(
        config, tmp_path, repo, monkeypatch):
    spec = a_spec(config, tmp_path, "apc", repo)
    h200 = {"kind": "gpu", "name": "NVIDIA H200", "count": 1, "driver": "580.159.04", "memory": "143771 MiB",
            "cuda": "13.0", "host": "vm"}

    def start(uuid, cut_at=None):
        monkeypatch.setattr(experiments.context.provenance, "accelerator", lambda: {**h200, "uuids": [uuid]})
        return start_three_server_runs(spec, cut_at)

    start("GPU-a", cut_at=2)  # two server runs kept on one host's H200
    arm, opened = start("GPU-b", cut_at=2)  # a host lent anew: not said, measured again
    assert opened == [("apc", 0), ("apc", 1)]
    monkeypatch.setenv(experiments.server_runs.RESUME_OTHER_GPU_ENV, "1")
    arm, opened = start("GPU-c")
    assert opened == [("apc", 2)]  # said: taken, with the GPU they were made on
    assert [(s.get("resumed_gpu") or {}).get("uuids") for s in arm.starts] == [["GPU-b"]] * 2 + [None]
    assert arm.meta.accelerator["uuids"] == ["GPU-c"]
    # another GPU model is never taken
    for p in experiments.ArmRuns.kept_dir(spec).iterdir():
        p.unlink()
    start("GPU-c", cut_at=1)
    h200 = {**h200, "name": "NVIDIA H100 80GB HBM3"}
    arm, opened = start("GPU-d")
    assert opened == [("apc", 0), ("apc", 1), ("apc", 2)]


def test_run_alternating_removes_what_it_kept_once_the_arms_are_written(config, tmp_path, repo, monkeypatch):
    spec = a_spec(config, tmp_path, "apc", repo)
    opened, original = [], experiments.server_runs.prepare

    def prepare(specs, has_cuda=None):  # the real arms, on stand-in server runs
        arms = original(specs, has_cuda)
        for a in arms:
            a.server_run = fake_server_runs(a, opened)
        monkeypatch.setitem(experiments.server_runs.SERVER_RUNS, "random_overhead",
                            lambda c, p, i: book_one(c, p, i, arms=arms))
        return arms

    monkeypatch.setattr(experiments.server_runs, "prepare", prepare)
    metas = experiments.run_alternating([spec], 2, has_cuda=False)
    assert metas[0]["status"] == "ok" and metas[0]["n_requests"] == 2 and len(opened) == 2
    assert not experiments.ArmRuns.kept_dir(spec).exists()


def test_run_alternating_with_no_arm_that_can_run_starts_nothing(config, tmp_path, repo):
    metas = experiments.run_alternating([a_spec(config, tmp_path, "lmcache_cpu", repo)], 3, has_cuda=False)
    assert [(m["arm"], m["status"]) for m in metas] == [("lmcache_cpu", "not_run")]
    with pytest.raises(ValueError, match="one experiment of random_overhead"):
        experiments.run_alternating([dataclasses.replace(a_spec(config, tmp_path, "apc", repo),
                                                         experiment="baseline")], 3)


# -- output length and context checks ---------------------------------------------------------
def test_output_tokens_replace_client_max_tokens_for_this_experiment_only(config):
    spec = dag.run_params(config, "random_overhead", "h200", "apc")
    assert spec["client"]["max_tokens"] == 48 == config["experiments"]["random_overhead"]["output_tokens"]
    assert dag.run_params(config, "cold_warm", "h200", "apc")["client"] == config["client"]
    need, how = prompt_tokens_needed("random_overhead", spec["params"], config["client"]["max_tokens"])
    assert need == 50 + 80 + 48 and how.endswith("output_tokens")


def test_context_check_counts_output_tokens(config):
    bad = json.loads(json.dumps(config))
    bad["experiments"]["random_overhead"]["output_tokens"] = 4096
    with pytest.raises(ConfigError, match=r"experiments.random_overhead .*output_tokens"):
        check(bad)


# -- the DAG: one job per platform, files per arm ---------------------------------------------
#: the config's random_overhead arms: APC only, LMCache's CPU store, vLLM's CPU offloading
ARMS = ("apc", "lmcache_cpu", "vllm_offload_cpu")


def test_alternating_job_params_and_benchmark_file(config):
    cfg = {**config, "run_platforms": ["cpu", "h200"]}
    p = dag.alternating_params(cfg, "random_overhead", "h200")
    assert p["server_runs"] == 2 and p["platform"] == "h200"  # platforms.h200 overrides server_runs
    assert [a["arm_name"] for a in p["arms"]] == list(ARMS)
    # each arm keeps the config hash of a job of its own (freshness compares per arm)
    assert [a["config_hash"] for a in p["arms"]] == [
        dag.run_params(cfg, "random_overhead", "h200", arm)["config_hash"] for arm in ARMS]
    assert dag.alternating_outputs(cfg, "random_overhead", "cpu", "jsonl") == [
        f"results/raw/cpu/random_overhead/{arm}.jsonl" for arm in ARMS]
    bench = dag.benchmark_files(cfg, root="/nonexistent")
    assert "results/benchmarks/h200/random_overhead/alternating.tsv" in bench
    assert not [b for b in bench if "/random_overhead/apc" in b or "/random_overhead/lmcache" in b]
    assert "results/benchmarks/h200/restart/apc.tsv" in bench  # other experiments: a job per arm


def test_dry_run_has_one_random_overhead_job_per_platform(repo, tmp_path):
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "measure",
                        "--config", "run_platforms=[\"cpu\",\"h200\"]", "report_platforms=[\"cpu\",\"h200\"]"],
                       cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    for platform in ("cpu", "h200"):
        block = out.split(f"rule run_random_overhead_{platform}:")
        assert len(block) == 2, out  # one job, named for the SLURM profile's routing
        job = re.split(r"\n\s*\n|\n\[", block[1])[0]
        outputs = job.split("output: ")[1].split("\n")[0].split(", ")
        assert sorted(outputs) == sorted(f"results/raw/{platform}/random_overhead/{arm}.{ext}"
                                         for arm in ARMS for ext in ("jsonl", "meta.json"))
        assert f"benchmark: results/benchmarks/{platform}/random_overhead/alternating.tsv" in job
        assert "wildcards:" not in job


# -- the two-level bootstrap -------------------------------------------------------------------
def matrix(rows):
    """runs x prompts (repeat 0, seq i)."""
    rows = np.asarray(rows, float)
    return pd.DataFrame(rows, columns=pd.MultiIndex.from_tuples([(0, i) for i in range(rows.shape[1])]))


def test_ci_is_nan_with_one_server_run_on_a_side():
    point, lo, hi = alternating.ratio_ci(matrix([[11, 12, 13]]), matrix([[10, 10, 10], [10, 10, 10]]))
    assert point == pytest.approx(20.0) and np.isnan(lo) and np.isnan(hi)
    point, lo, hi = alternating.ratio_ci(matrix([[11, 12, 13], [11, 12, 13]]), matrix([[10, 11, 12]]))
    assert np.isfinite(point) and np.isnan(lo) and np.isnan(hi)


def test_ci_collapses_for_identical_runs():
    ref = [10.0, 20.0, 30.0, 40.0]
    arm = [1.1 * x for x in ref]  # the same change on every prompt, every run alike
    point, lo, hi = alternating.ratio_ci(matrix([arm] * 3), matrix([ref] * 3))
    assert point == lo == pytest.approx(10.0) and hi == pytest.approx(10.0)


def test_ci_widens_with_noise_between_server_runs_even_where_prompts_agree():
    ref = matrix([[100.0] * 20] * 3)
    same = alternating.ratio_ci(matrix([[110.0] * 20] * 3), ref)
    shifted = alternating.ratio_ci(matrix([[100.0] * 20, [110.0] * 20, [120.0] * 20]), ref)
    assert same[2] - same[1] == pytest.approx(0.0)
    assert shifted[0] == pytest.approx(10.0)
    assert shifted[2] - shifted[1] > 10  # resampling the runs finds 0% .. 20%
    assert shifted[1] < 10 < shifted[2]


def test_ci_pairs_by_prompt_and_skips_prompts_one_side_lacks():
    ref = matrix([[10.0, 20.0, 1000.0], [10.0, 20.0, 1000.0]])
    arm = matrix([[11.0, 22.0], [11.0, 22.0]])  # the third prompt failed in the arm
    point, lo, hi = alternating.ratio_ci(arm, ref)
    assert point == pytest.approx(10.0) and lo == pytest.approx(10.0) and hi == pytest.approx(10.0)


# -- the table -----------------------------------------------------------------------------------
def record(arm, seq, e2e, *, server_run=None, repeat=0, platform="h200"):
    return results.RequestRecord(platform=platform, experiment="random_overhead", arm=arm,
                                 phase=f"repeat_{server_run}_{repeat}", phase_kind="repeat", seq=seq,
                                 prompt_tokens=130, cached_tokens=0, output_tokens=48, ttft_ms=e2e / 10,
                                 itl_ms=[], e2e_ms=e2e, error=None, repeat=repeat, server_run=server_run)


def write_arm(tmp_path, arm, recs, platform="h200"):
    m = a_meta(arm, platform)
    for r in recs:
        if r.phase not in m.phases:
            m.add_phase(r.phase, results.Phase(kind="repeat", n_requests=1, wall_s=1.0, counters={},
                                               repeat=r.repeat, server_run=r.server_run))
    results.write_meta(tmp_path / f"{arm}.meta.json", m)
    results.write_records(tmp_path / f"{arm}.jsonl", recs)
    return tmp_path / f"{arm}.jsonl"


def test_table_of_alternating_runs_has_server_runs_and_a_ci(tmp_path):
    files = [write_arm(tmp_path, "apc", [record("apc", i, 100.0 + i + run, server_run=run)
                                         for run in range(3) for i in range(10)]),
             write_arm(tmp_path, "lmcache_cpu", [record("lmcache_cpu", i, 110.0 + i + 2 * run, server_run=run)
                                                 for run in range(3) for i in range(10)])]
    t = aggregate.build("random_overhead", files, 0.05).set_index("arm")
    assert t.loc["apc", "server_runs"] == t.loc["lmcache_cpu", "server_runs"] == 3
    assert t.loc["lmcache_cpu", "n"] == 30
    row = t.loc["lmcache_cpu"]
    for key in ("e2e", "ttft"):
        assert row[f"{key}_delta_ci95_lo_pct"] < row[f"{key}_delta_pct"] < row[f"{key}_delta_ci95_hi_pct"]
    assert pd.isna(t.loc["apc", "e2e_delta_pct"])  # the reference has no change against itself


def test_committed_runs_of_one_server_run_still_aggregate_with_a_nan_ci(tmp_path):
    """Runs made before the alternating design: no server_run, repeats 0..2 of other prompts."""
    files = [write_arm(tmp_path, arm, [record(arm, i, base + i, repeat=rep) for rep in range(3) for i in range(5)])
             for arm, base in (("apc", 100.0), ("lmcache_cpu", 101.0))]
    t = aggregate.build("random_overhead", files, 0.05).set_index("arm")
    row = t.loc["lmcache_cpu"]
    assert row["server_runs"] == 1 and row["n"] == 15
    assert row["e2e_delta_pct"] == pytest.approx(100 * (103.0 / 102.0 - 1))  # paired by (repeat, seq)
    assert np.isnan(row["e2e_delta_ci95_lo_pct"]) and np.isnan(row["ttft_delta_ci95_hi_pct"])


def test_the_committed_h100_and_h200_runs_aggregate(repo):
    files = sorted(str(p) for p in (repo / "results/raw").glob("h*/random_overhead/*.jsonl"))
    assert files
    t = aggregate.build("random_overhead", files, 0.05)
    # the H100's runs had one server run a side (no CI between server runs); the H200's (lease
    # 4) two, each with the CI of the difference
    one, two = t[t["platform"] == "h100"], t[t["platform"] == "h200"]
    assert set(one["server_runs"]) == {1} and set(two["server_runs"]) == {2}
    assert one[["e2e_delta_ci95_lo_pct", "e2e_delta_ci95_hi_pct"]].isna().all().all()
    offload = two[two["arm"] != "apc"]
    assert len(offload) == 2 and offload[["e2e_delta_ci95_lo_pct", "e2e_delta_ci95_hi_pct"]].notna().all().all()


# -- the cost and the accounting of a shared job ------------------------------------------------
def test_cost_shares_an_alternating_jobs_wall_time_among_its_arms():
    metas = []
    for arm, busy in (("apc", 10.0), ("lmcache_cpu", 30.0)):
        m = a_meta(arm)
        m.server_starts = [{"process": "vllm", "startup_s": busy / 2}]
        m.add_phase("repeat_run0_0", results.Phase(kind="repeat", n_requests=1, wall_s=busy / 2, counters={}))
        metas.append(m)
    t = aggregate.cost_table(metas, {("h200", "random_overhead", "alternating"): 100.0})
    assert t.set_index("arm").loc[["apc", "lmcache_cpu"], "wall_s"].tolist() == [25.0, 75.0]

    # a server run taken from an earlier start of the job (resumed) adds its own span: from its
    # server's start (at less startup_s) to when it was kept
    metas[0].server_starts.insert(0, {"process": "vllm", "startup_s": 60.0, "server_run": 0,
                                      "at": "2026-11-29T20:01:00+00:00", "resumed_from": "2026-11-29T20:03:00+00:00"})
    t = aggregate.cost_table(metas, {("h200", "random_overhead", "alternating"): 100.0})
    assert t.set_index("arm").loc["apc", "wall_s"] == pytest.approx(100.0 * 10 / 40 + 180.0)


def test_accounting_finds_the_shared_jobs_log(tmp_path):
    log = tmp_path / "h200" / "random_overhead" / "alternating.log"
    log.parent.mkdir(parents=True)
    log.write_text("RuntimeError: boom\n")
    where, text = JobLogs(log_root=tmp_path).find("h200", "random_overhead", "lmcache_cpu")
    assert where == str(log) and "boom" in text
    assert JobLogs(log_root=tmp_path).find("h200", "restart", "alternating") is None


def test_the_store_cost_on_the_cold_path_comes_from_lmcache_log_or_vllm_offload_counters():
    from kvreuse.results import Phase
    from kvreuse.tables_overhead import store_cost

    lm = a_meta("lmcache_cpu")
    lm.phases = {"repeat_run0_0": Phase(kind="repeat", n_requests=10, wall_s=1.0, counters={},
                                        lmcache_log={"store_ms": 50.0, "store_bytes": 20_000_000, "stores": 10})}
    assert store_cost(lm) == {"store_source": "lmcache_log", "store_ms_per_request": 5.0,
                              "store_mb_per_request": 2.0, "store_gb_s": pytest.approx(0.4)}  # MB/ms
    off = a_meta("vllm_offload_cpu")
    off.phases = {"repeat_run0_0": Phase(kind="repeat", n_requests=4, wall_s=1.0, counters={
        "vllm:kv_offload_store_time": 0.02, "vllm:kv_offload_store_bytes": 8e6})}
    assert store_cost(off) == {"store_source": "vllm:kv_offload_store_*", "store_ms_per_request": 5.0,
                               "store_mb_per_request": 2.0, "store_gb_s": pytest.approx(0.4)}
    assert store_cost(a_meta("apc"))["store_source"] == ""


# -- the store on the cold path, in the write-up (issue 12, item 5) -------------------------------
def test_the_write_up_says_when_lmcache_stored_nothing_because_the_prompts_are_below_a_chunk():
    from kvreuse import paper

    base = {"platform": "h200", "status": "ok", "e2e_delta_pct": 9.0, "e2e_delta_ci95_lo_pct": -3.0,
            "e2e_delta_ci95_hi_pct": 25.0, "store_ms_per_request": 0.0, "store_mb_per_request": 0.0,
            "prompt_tokens_mean": 130.0, "kv_bytes_per_token": 131072}
    t = pd.DataFrame([{**base, "arm": "lmcache_cpu", "chunk_tokens": 256.0},
                      {**base, "arm": "vllm_offload_cpu", "chunk_tokens": float("nan"),
                       "store_ms_per_request": 0.5, "store_mb_per_request": 10.0, "store_gb_s": 20.0}])
    rows = paper.random_rows(t, {"fallback": set()})
    lm, off = rows
    assert lm["below_chunk"] and lm["stored_nothing"] and not lm["stored"]
    assert off["stored"] and not off["below_chunk"]
    # a longer prompt that still stored nothing is not put down to the chunk
    longer = paper.random_rows(t.assign(prompt_tokens_mean=512.0), {"fallback": set()})[0]
    assert longer["stored_nothing"] and not longer["below_chunk"]

    claim = {"claimed": 123.0, "gpu": "l40s"}
    need, = paper.store_would_need(rows, claim)  # only the arm with a measured store rate
    assert need["arm_label"] == "vllm_offload_cpu" and need["gpu"] == "l40s"
    assert need["needed_gb"] == pytest.approx(0.123 * 20.0)
    assert need["needed_tokens"] == round(0.123 * 20.0 * 1e9 / 131072)
    assert need["prompt_store_ms"] == pytest.approx(130 * 131072 / 1e9 / 20.0 * 1000)
    assert need["factor"] == pytest.approx(123.0 / need["prompt_store_ms"])
    assert paper.store_would_need(rows, None) == []
