"""The cross_instance experiment without a GPU: its phase order and fields on stand-in servers,
the L1 capacity check, the GPU share of its two instances, not run on the CPU, the config
checks, and cross_instance.csv (and its comparison) from synthetic records."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import faultkit as fk
from kvreuse import aggregate, experiments, paper, results
from kvreuse import plan as arm_plan
from kvreuse.plan import ServerPlan
from kvreuse.recorder import ClientSettings
from kvreuse.recorder import Recorder as RealRecorder
from kvreuse.server import HOST, free_port
from kvreuse.servers import Servers as RealServers
from kvreuse.config import check, server_config
from kvreuse.errors import ConfigError
from kvreuse.experiments import sharing
from kvreuse.experiments.context import WARMUP_PREFIX_TOKENS
from kvreuse.kvmodel import kv_bytes_per_token
from kvreuse.lmcache.store import GIB
from kvreuse.tables_cross_instance import COLUMNS, LMCACHE_HITS

REPO = Path(__file__).resolve().parents[1]
LLAMA = REPO / "workflow/resources/llama-3.1-8b/config.json"
PARAMS = {"prefix_tokens_list": [1024, 2048], "n_cold": 2, "suffix_tokens": 16, "warmup_requests": 1}


# -- the experiment on stand-in servers --------------------------------------------------------
class Servers:
    """Named instances; records starts, stops and which instance each target was asked for."""

    def __init__(self, events):
        self.events = events

    def start(self, name="main", *, connector=True, devices=None):
        self.events.append(("start", name) if devices is None else ("start", name, devices))

    def stop(self, *names, lmcache_server=False):
        self.events.append(("stop", names, lmcache_server))

    def target(self, name="main"):
        return name


class Recorder:
    """Books each phase (counters empty) and remembers which instance got which prompts."""

    def __init__(self, meta, events):
        self.meta, self.events, self.sent = meta, events, []

    async def phase(self, target, kind, prompts, *, name=None, **fields):
        name = name or results.phase_name(kind)
        self.meta.add_phase(name, results.Phase(kind=kind, n_requests=len(prompts), wall_s=0.0, counters={},
                                                **fields))
        self.events.append(("phase", name))
        self.sent += [(name, target, tuple(p)) for p in prompts]
        return [SimpleNamespace(output_token_ids=[1, 2]) for _ in prompts]


def session(config, tmp_path, params: dict, arm: str = "lmcache_mp", model_dir: Path | None = None):
    """A Context on stand-ins, with the arm's real plan (as on a GPU) and the llama's config."""
    if model_dir is None:
        model_dir = tmp_path / "model"
        model_dir.mkdir(exist_ok=True)
        shutil.copyfile(LLAMA, model_dir / "config.json")
    server = server_config(config, "h200")
    p = arm_plan.plan(arm, config["arms"][arm], server=server, model=config["models"]["llama-3.1-8b"],
                      run_dir=tmp_path / "logs", has_cuda=True, store_root=tmp_path / "store",
                      gpu_memory_utilization=0.35)
    meta = results.RunMeta(status="ok", platform="h200", experiment="cross_instance", arm=arm,
                           arm_config=config["arms"][arm], params=dict(params), accelerator={}, versions={},
                           model={}, server={}, client={}, config_hash=None, git_commit=None, started_at="",
                           finished_at=None, phases={})
    spec = SimpleNamespace(platform="h200", experiment="cross_instance", arm_name=arm, arm=config["arms"][arm],
                           params=params, model_dir=model_dir, server=server, client={"max_tokens": 16})
    events = []
    ctx = experiments.Context(spec, p, Servers(events), Recorder(meta, events), None,
                              SimpleNamespace(tokens=lambda name, n: [hash(name) % 1000] * n))
    return ctx, events


def run(ctx) -> None:
    asyncio.run(experiments.cross_instance(ctx, ctx.spec.params))


def test_a_populates_stops_and_b_reads_each_prefix_then_a_never_seen_one(config, tmp_path):
    ctx, events = session(config, tmp_path, PARAMS)
    run(ctx)
    phases = ctx.meta.phases
    pairs = [f"{k}_{n}_{i}" for n in (1024, 2048) for i in range(2) for k in ("cross_first", "cross_cold")]
    assert list(phases) == ["warmup", "populate_1024_0", "populate_1024_1", "populate_2048_0", "populate_2048_1",
                            "warmup_instance_b", *pairs]
    # A, its warm-up and populates; A stopped (the LMCache server kept); B, its warm-up and the pairs
    starts_stops = [e for e in events if e[0] != "phase"]
    assert starts_stops == [("start", "a"), ("stop", ("a",), False), ("start", "b")]
    assert events.index(("stop", ("a",), False)) == events.index(("phase", "populate_2048_1")) + 1
    assert {n: ph.instance for n, ph in phases.items()} == {
        n: ("a" if n == "warmup" or n.startswith("populate") else "b") for n in phases}
    assert all(target == phases[name].instance for name, target, _ in ctx.recorder.sent)
    for n in (1024, 2048):
        for i in range(2):
            for kind in ("populate", "cross_first", "cross_cold"):
                ph = phases[f"{kind}_{n}_{i}"]
                assert (ph.kind, ph.prefix_tokens, ph.repeat, ph.after_restart) == (kind, n, i, False)
    sent = {name: prompt for name, _, prompt in ctx.recorder.sent}
    for n in (1024, 2048):
        for i in range(2):
            # B's first request is A's populate prompt; the never-seen one has its length and is new
            assert sent[f"cross_first_{n}_{i}"] == sent[f"populate_{n}_{i}"] and len(sent[f"populate_{n}_{i}"]) == n + 16
            cold = sent[f"cross_cold_{n}_{i}"]
            assert len(cold) == n + 16 and [p for name, p in sent.items() if p == cold] == [cold]
    # B's warm-up is never-seen too (a re-sent warm-up prompt would be loaded from the store)
    assert sent["warmup_instance_b"] not in [p for name, p in sent.items() if name != "warmup_instance_b"]
    assert ctx.meta.params == {**PARAMS, "stop_instance_a": True, "gpu_memory_utilization": 0.35,
                                    "prefix_tokens_list": [1024, 2048], "n_cold": 2, "instance_devices": None}


def test_a_keeps_running_when_asked(config, tmp_path):
    ctx, events = session(config, tmp_path, {**PARAMS, "stop_instance_a": False, "warmup_requests": 0})
    run(ctx)
    assert [e for e in events if e[0] != "phase"] == [("start", "a"), ("start", "b")]
    assert not any(ph.kind == "warmup" for ph in ctx.meta.phases.values())
    assert ctx.meta.params["stop_instance_a"] is False


def test_the_run_stops_before_any_start_when_the_l1_cannot_hold_its_kv(config, tmp_path):
    cfg = copy.deepcopy(config)
    cfg["arms"]["lmcache_mp"]["lmcache"]["cpu_gb"] = 1
    ctx, events = session(cfg, tmp_path, PARAMS)
    with pytest.raises(ConfigError, match=r"arms\.lmcache_mp\.lmcache\.cpu_gb is 1 GiB.*Raise arms\.lmcache_mp"
                                          r"\.lmcache\.cpu_gb to at least 2 \(or .*l1_eviction_watermark\), or lower experiments\.cross_instance"):
        run(ctx)
    assert events == []
    # whole chunks only: a 1040-token prompt leaves 1024 tokens in a store of 256-token chunks
    assert sharing.stored_tokens([1040] * 2 + [2064] * 2, 256) == 2 * 1024 + 2 * 2048
    # not checked where the model's KV size is unknown, nor for a file tier (it takes what L1 evicts)
    ctx, events = session(cfg, tmp_path, PARAMS, model_dir=tmp_path / "no-config")
    run(ctx)
    assert events[0] == ("start", "a")
    cfg["arms"]["lmcache_mp_l2"]["lmcache"]["cpu_gb"] = 1
    ctx, events = session(cfg, tmp_path, PARAMS, arm="lmcache_mp_l2")
    run(ctx)
    assert events[0] == ("start", "a")


def test_the_configured_h200_run_fits_the_arms_l1(config):
    """The shipped config: A's prefixes, B's never-seen ones and both warm-ups in lmcache_mp's L1."""
    p = {**config["experiments"]["cross_instance"], **config["platforms"]["h200"]["experiments"]["cross_instance"]}
    lengths = [n + p["suffix_tokens"] for n in p["prefix_tokens_list"] for _ in range(p["n_cold"])] * 2
    lengths += [WARMUP_PREFIX_TOKENS + p["suffix_tokens"]] * p["warmup_requests"] * 2
    for arm in p["arms"]:
        lm = config["arms"][arm]["lmcache"]
        need = sharing.stored_tokens(lengths, lm["chunk_size"]) * kv_bytes_per_token(json.loads(LLAMA.read_text()))
        assert need <= lm["cpu_gb"] * GIB, (arm, need / GIB)


def test_a_plan_without_an_lmcache_server_is_refused(config, tmp_path):
    ctx, events = session(config, tmp_path, PARAMS, arm="lmcache_cpu")
    with pytest.raises(ConfigError, match="has no LMCache server to share"):
        run(ctx)
    assert events == []


# -- the two instances' share of the GPU ---------------------------------------------------------
def spec(config, tmp_path, platform: str, experiment: str, arm: str = "lmcache_mp") -> experiments.RunSpec:
    params = copy.deepcopy(config["experiments"][experiment])
    params.update((config["platforms"][platform].get("experiments") or {}).get(experiment, {}))
    return experiments.RunSpec(
        platform=platform, experiment=experiment, arm_name=arm, arm=config["arms"][arm], params=params,
        model_name="m", model=config["models"][config["platforms"][platform]["model"]], model_dir=tmp_path / "model",
        server=server_config(config, platform), client=config["client"],
        out_jsonl=tmp_path / "raw" / platform / experiment / f"{arm}.jsonl", log_dir=tmp_path / "logs",
        config_hash="0" * 16, repo_dir=REPO, lmcache_dir=tmp_path / "lmcache" / platform)


def flag_value(plan, flag: str = arm_plan.GPU_MEMORY_FLAG) -> str:
    assert plan.vllm_args.count(flag) == 1, plan.vllm_args  # replaced, not duplicated
    return plan.vllm_args[plan.vllm_args.index(flag) + 1]


def test_the_experiments_gpu_share_replaces_the_platforms_flag(config, tmp_path):
    flag = arm_plan.GPU_MEMORY_FLAG
    # a100: the platform profiles 0.85 of the GPU for one vLLM; the experiment's two take 0.35 each
    ours = experiments.arm_plan(spec(config, tmp_path, "a100", "cross_instance"), tmp_path / "a", has_cuda=True)
    assert flag_value(ours) == "0.35" and ours.lmcache_server is not None and ours.not_run_reason is None
    theirs = experiments.arm_plan(spec(config, tmp_path, "a100", "restart"), tmp_path / "b", has_cuda=True)
    assert flag_value(theirs) == "0.85"  # other experiments: the platform's
    # h200: a fixed KV cache per vLLM (--kv-cache-memory-bytes) and a free-memory check of 0.15;
    # the experiment's null keeps them, and the rest of the platform's extra_args stays
    h200 = experiments.arm_plan(spec(config, tmp_path, "h200", "cross_instance"), tmp_path / "c", has_cuda=True)
    assert config["platforms"]["h200"]["experiments"]["cross_instance"]["gpu_memory_utilization"] is None
    assert flag_value(h200) == "0.15" and "--kv-cache-memory-bytes" in h200.vllm_args
    assert "--enforce-eager" in h200.vllm_args
    assert arm_plan.set_flag(["--x", f"{flag}=0.9", "--y", "1", flag, "0.8"], flag, "0.3") == [
        "--x", "--y", "1", flag, "0.3"]
    assert arm_plan.set_flag(["--y"], flag, "0.3") == ["--y", flag, "0.3"]


def test_not_run_on_the_cpu_with_its_reason(config, tmp_path):
    s = spec(config, tmp_path, "cpu", "cross_instance")
    s.model_dir.mkdir(parents=True)
    (s.model_dir / "kvreuse-model.json").write_text(json.dumps({"name": "tiny-llama", "weights": "random"}))
    meta = experiments.run(s, has_cuda=False)
    assert s.out_jsonl.read_text() == ""
    written = results.read_meta(results.meta_path(s.out_jsonl))
    assert (meta["status"], written.status, written.reason) == ("not_run", "not_run", "LMCache needs CUDA")
    assert written.phases == {} and not (tmp_path / "lmcache").exists()


# -- config ----------------------------------------------------------------------------------------
def test_config_checks_its_arms_and_lengths(config):
    check(config)
    assert config["experiments"]["cross_instance"]["arms"] == ["lmcache_mp"]
    bad = copy.deepcopy(config)
    bad["experiments"]["cross_instance"]["arms"] = ["apc"]
    with pytest.raises(ConfigError, match=r"experiments\.cross_instance\.arms: 'apc' has no LMCache server "
                                          r"for the two instances to share \(allowed: arms with lmcache\.mode "
                                          r"'server': lmcache_mp, lmcache_mp_l2\)"):
        check(bad)
    bad = copy.deepcopy(config)
    del bad["platforms"]["cpu"]["experiments"]["cross_instance"]  # 32768 tokens on a 4096-token model
    with pytest.raises(ConfigError, match=r"experiments\.cross_instance on platform cpu: prompts reach 32800 "
                                          r"tokens \(max\(prefix_tokens_list\)"):
        check(bad)


# -- cross_instance.csv from synthetic records -----------------------------------------------------
LM = {"lmcache": {"mode": "server", "store": "cpu", "chunk_size": 256}}


def synthetic_run(tmp_path, *, hits=(1024.0, 768.0, 1024.0), outputs=((1, 2), (1, 2), (1, 2))) -> str:
    """A cross_instance run at 1024 tokens, three prefixes: A's populate, then on B each first
    request (``hits`` external hits, output ``outputs``) and a never-seen prefix."""
    phases, recs = {}, []
    m = results.RunMeta(status="ok", platform="h200", experiment="cross_instance", arm="lmcache_mp", arm_config=LM,
                        params={"stop_instance_a": True}, accelerator={"kind": "gpu"}, versions={}, model={},
                        server={"vllm_args": []}, client={}, config_hash=None, git_commit=None, started_at="",
                        finished_at=None, phases=phases, lmcache={"cuda_kernels": "loaded"})

    def add(name, kind, instance, ttft, counters=None, out=(1, 2), **f):
        phases[name] = results.Phase(kind=kind, n_requests=1, wall_s=0, counters=counters or {}, instance=instance, **f)
        recs.append(results.RequestRecord(platform=m.platform, experiment=m.experiment, arm=m.arm, phase=name,
                                          phase_kind=kind, seq=0, prompt_tokens=1040, cached_tokens=None,
                                          output_tokens=len(out), ttft_ms=ttft, itl_ms=[], e2e_ms=ttft + 100,
                                          error=None, output_token_ids=list(out), **f))

    add("warmup", "warmup", "a", 500.0)
    for i in range(3):
        add(f"populate_1024_{i}", "populate", "a", 100.0, prefix_tokens=1024, repeat=i)
    add("warmup_instance_b", "warmup", "b", 500.0)
    for i, (h, out) in enumerate(zip(hits, outputs)):
        f = {"prefix_tokens": 1024, "repeat": i}
        add(f"cross_first_1024_{i}", "cross_first", "b", 30.0 + 10 * i, out=out,
            counters={"vllm:external_prefix_cache_hits": h, LMCACHE_HITS: h}, **f)
        add(f"cross_cold_1024_{i}", "cross_cold", "b", 90.0 + 10 * i, out=(5,), **f)
    out = tmp_path / "h200" / "cross_instance" / "lmcache_mp.jsonl"
    results.write_records(out, recs)
    results.write_meta(results.meta_path(out), m)
    return str(out)


def not_run(tmp_path) -> str:
    m = results.RunMeta(status="not_run", reason="LMCache needs CUDA", platform="cpu", experiment="cross_instance",
                        arm="lmcache_mp", arm_config=LM, params={}, accelerator={}, versions={}, model={}, server={},
                        client={}, config_hash=None, git_commit=None, started_at="", finished_at=None, phases={})
    out = tmp_path / "cpu" / "cross_instance" / "lmcache_mp.jsonl"
    results.write_records(out, [])
    results.write_meta(results.meta_path(out), m)
    return str(out)


def test_table_per_length_with_the_difference_hits_and_outputs(tmp_path):
    t = aggregate.build("cross_instance", [synthetic_run(tmp_path), not_run(tmp_path)], 0.05)
    assert list(t.columns) == COLUMNS and len(t) == 2
    r = t[t.status == "ok"].iloc[0]
    assert (r.platform, r.arm, r.prefix_tokens, r.n_cross_first, r.n_cross_cold) == ("h200", "lmcache_mp", 1024, 3, 3)
    assert r.cross_first_ttft_median_ms == 40.0 and r.cross_cold_ttft_median_ms == 100.0
    assert r.diff_median_ms == 60.0 and r.diff_ci95_lo_ms == r.diff_ci95_hi_ms == 60.0  # paired: each pair saves 60
    assert r.speedup == pytest.approx(2.5) and r.cross_first_ttft_ci95_lo_ms < r.cross_first_ttft_ci95_hi_ms
    # B's counters: 1024, 768, 1024 of 1024 reusable tokens (1040 less one, whole 256-token chunks)
    assert r.reusable_tokens == 1024 and r.hit_fraction == 1.0 and r.hit_fraction_min == 0.75
    assert r.hit_tokens == 2816.0 and r.lmcache_hit_tokens == 2816.0 and r.cross_cold_hit_tokens == 0.0
    assert r.output_equal == True  # noqa: E712 (a numpy bool)
    assert r.instance_a_stopped and r.cuda_kernels == "loaded"
    nr = t[t.status == "not_run"].iloc[0]
    assert (nr.platform, nr.reason) == ("cpu", "LMCache needs CUDA") and math.isnan(nr.prefix_tokens)


def test_table_output_differs_no_lmcache_counter_and_no_ci_for_one_pair(tmp_path):
    f = synthetic_run(tmp_path, hits=(1024.0, 0.0), outputs=((1, 2), (9, 9)))
    df, metas = aggregate.load([f])
    for ph in metas[0].phases.values():  # an LMCache server that exported no lookup counter
        ph.counters.pop(LMCACHE_HITS, None)
    t = aggregate.cross_instance_table(df, metas)
    r = t.iloc[0]
    assert r.output_equal == False and r.hit_fraction_min == 0.0 and math.isnan(r.lmcache_hit_tokens)  # noqa: E712
    assert r.n_cross_first == r.n_cross_cold == 2 and r.diff_median_ms == 60.0
    assert aggregate.cross_instance_table(df.iloc[0:0], []).columns.tolist() == COLUMNS  # no run: a header


def test_the_comparisons_table_pairs_b_never_seen_and_first_by_prefix(tmp_path):
    t = aggregate.build("comparisons", [synthetic_run(tmp_path)], 0.05)
    r = t[t.experiment == "cross_instance"].iloc[0]
    assert (r.baseline, r.treatment, bool(r.paired), r.prefix_tokens) == ("cross_cold", "cross_first", True, 1024)
    assert r.diff_median_ms == 60.0 and r.n_baseline == r.n_treatment == 3


def test_write_up_context_from_the_table(tmp_path):
    t = aggregate.build("cross_instance", [synthetic_run(tmp_path), not_run(tmp_path)], 0.05)
    t.to_csv(tmp_path / "t.csv", index=False)
    kernels = paper.lmcache_kernels(pd.DataFrame({"platform": [], "experiment": [], "arm": []}))
    ctx = paper.cross_instance_context(pd.read_csv(tmp_path / "t.csv"), kernels)
    (row,) = ctx["rows"]
    assert (row["direction"], row["a_stopped"], row["same_output"]) == ("faster", True, True)
    assert [r["reason"] for r in ctx["not_run"]] == ["LMCache needs CUDA"]
    slower = paper.cross_instance_context(t.assign(diff_ci95_lo_ms=-5.0, diff_ci95_hi_ms=-1.0), kernels)
    assert slower["rows"][0]["direction"] == "slower"
    assert ctx["table"].prefix_tokens.tolist() == [1024] and ctx["table"].n_cross_first.dtype.kind == "i"
    assert paper.cross_instance_context(None, kernels) == {"rows": [], "not_run": [], "table": None}


# -- the experiment on real processes: stand-in vLLMs (tests/fakevllm), one as the LMCache server --
def test_two_stand_in_instances_and_a_shared_server_process_end_to_end(tmp_path):
    marker = fk.new_marker()
    port = free_port()
    side = f"http://{HOST}:{port}"
    plan = ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)},
                      lmcache_server={"argv": [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                                               "--port", str(port)],
                                      "health_url": f"{side}/health", "metrics_url": f"{side}/metrics"},
                      lmcache={"metrics_urls": []})
    params = {"prefix_tokens_list": [64, 128], "n_cold": 2, "suffix_tokens": 8, "warmup_requests": 1}
    meta = results.RunMeta(status="ok", platform="h200", experiment="cross_instance", arm="lmcache_mp",
                           arm_config={"lmcache": LM["lmcache"]}, params=dict(params), accelerator={}, versions={},
                           model={}, server={}, client={}, config_hash=None, git_commit=None, started_at="",
                           finished_at=None, phases={})
    spec = SimpleNamespace(platform="h200", experiment="cross_instance", arm_name="lmcache_mp", arm=LM,
                           params=params, model_dir=tmp_path)  # no config.json: the L1 check is skipped
    servers = RealServers(plan, model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                          server={"startup_timeout_s": 30, "stop_timeout_s": 10})
    recorder = RealRecorder(meta, ClientSettings("m", max_tokens=4, request_timeout_s=30))
    ctx = experiments.Context(spec, plan, servers, recorder, None,
                              SimpleNamespace(tokens=lambda name, n: [hash(name) % 1000 + 1] * n))

    async def main():
        async with recorder:
            await experiments.cross_instance(ctx, params)

    with servers:
        asyncio.run(main())
        # during the run: the LMCache server first, then A; A stopped (gracefully) before B started
        assert [s["process"] for s in servers.starts] == ["lmcache-server", "vllm-a", "vllm-b"]
        assert [(s["process"], s["returncode"]) for s in servers.stops] == [("vllm-a", 0)]
        assert servers.lmcache_server is not None and list(servers.vllm) == ["b"]
        servers.check("b")
    fk.assert_none_left(marker)  # leaving the block stopped B and the LMCache server
    assert len(recorder.records) == 2 + 3 * 4 and not [r for r in recorder.records if r.error]
    by_phase = {r.phase: r for r in recorder.records}
    assert by_phase["cross_first_128_1"].prompt_tokens == 128 + 8 and by_phase["cross_first_128_1"].repeat == 1
    phases = meta.phases
    # every phase read both the instance's counters and the shared server's; B's own prefix cache
    # never saw A's prompts (a hit on B can only come through the shared store)
    assert all("vllm:prefix_cache_queries" in ph.counters for ph in phases.values())
    assert all(ph.counters["vllm:prefix_cache_hits"] == 0 for ph in phases.values() if ph.kind == "cross_first")


def test_the_cost_table_counts_both_instances_starts_not_the_lmcache_server():
    """cost.csv's server starts of a cross_instance run: vllm-a and vllm-b (the committed H200
    run recorded 0 before)."""
    from kvreuse.results import read_meta
    from kvreuse.tables_runs import _vllm_starts
    m = read_meta(Path(__file__).parents[1] / "results/raw/h200/cross_instance/lmcache_mp.meta.json")
    assert {s["process"] for s in m.server_starts} == {"lmcache-server", "vllm-a", "vllm-b"}
    assert len(_vllm_starts(m)) == 2
