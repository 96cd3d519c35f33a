"""The pressure and miss experiments without a server: vllm bench serve's dataset flags (checked
against the installed vLLM's source), the ShareGPT-format file, the shrunk KV cache's flags and
its config check, the phases each experiment runs (stand-in servers, recorder, load generator),
the tables from fake runs (the GPU-only arms included) and the write-up's directions."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from kvreuse import alternating, conversations, dag, experiments, paper_pressure, results
from kvreuse.config import check, prompt_tokens_needed
from kvreuse.errors import ConfigError
from kvreuse.experiments.context import experiment_flags
from kvreuse.loadgen import BenchServe, Load
from kvreuse.plan import plan
from kvreuse.tables_miss import miss_table
from kvreuse.tables_pressure import no_eviction_hits, pressure_table

PRESSURE = {"arms": ["apc", "lmcache_cpu"], "prefix_tokens": 64, "suffix_tokens": 8, "num_prefixes": 4,
            "suffixes_per_prefix": 3, "output_tokens": 4, "max_concurrency": 2, "num_gpu_blocks": 9,
            "block_size": 16, "evicting_below": 0.9, "warmup_requests": 1,
            "conversation": {"num_prompts": 5, "min_prompt_tokens": 8, "max_prompt_tokens": 32}}
MISS = {"arms": ["apc", "vllm_offload_cpu"], "prompt_tokens_list": [16, 64], "n_requests": 3, "hit_prompts": 2,
        "server_runs": 2, "output_tokens": 4, "warmup_requests": 1}


# -- vllm bench serve's flags ----------------------------------------------------------------
def _vllm_source(rel: str) -> str:
    """A file of the installed vLLM, read without importing it (an import takes seconds)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed here")
    return (Path(list(spec.submodule_search_locations)[0]) / rel).read_text()


def test_dataset_flags_are_vllm_bench_serves(tmp_path):
    source = _vllm_source("benchmarks/datasets/datasets.py")
    loads = [Load("inf", 12, 64, 4, 2, dataset="prefix_repetition", suffix_len=8, num_prefixes=4),
             Load("inf", 5, 32, 4, 2, dataset="sharegpt", dataset_path=tmp_path / "c.json"),
             Load(1, 5, 32, 4)]
    for load in loads:
        flags = [a for a in load.dataset_args() if a.startswith("--")]
        for flag in flags:
            assert f'"{flag}"' in source, flag
    assert loads[0].dataset_args()[:2] == ["--dataset-name", "prefix_repetition"]
    assert "--prefix-repetition-num-prefixes" in loads[0].dataset_args()
    # the random dataset's argv is the serving experiment's, as before
    assert loads[2].dataset_args() == ["--dataset-name", "random", "--random-input-len", "32",
                                       "--random-output-len", "4", "--random-range-ratio", "0"]
    with pytest.raises(ValueError, match="suffix_len"):
        Load("inf", 12, 64, 4, dataset="prefix_repetition").dataset_args()
    with pytest.raises(ValueError, match="dataset_path"):
        Load("inf", 12, 64, 4, dataset="sharegpt").dataset_args()
    bench = BenchServe(SimpleNamespace(settings=SimpleNamespace(model="m", temperature=0.0)), tokenizer=Path("tok"),
                       log_dir=tmp_path)
    argv = bench.argv(SimpleNamespace(base_url="http://x"), loads[0], tmp_path)
    assert argv[argv.index("--max-concurrency") + 1] == "2" and "--ignore-eos" in argv
    # greedy, as kvreuse's own client: vLLM 0.26.0's bench serve sends no temperature unless told
    assert argv[argv.index("--temperature") + 1] == "0.0"
    serve = _vllm_source("benchmarks/serve.py")
    for flag in [a for a in argv if a.startswith("--")]:  # every flag we pass, in the installed vLLM
        assert f'"{flag}"' in serve or f'"{flag}"' in source, flag


# -- the ShareGPT-format file ----------------------------------------------------------------
class FakeTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [len(w) for w in text.split()]

    def decode(self, ids):
        return " ".join("x" * i for i in ids)


def test_sharegpt_file_is_deterministic_and_in_vllms_format(tmp_path):
    from kvreuse.workloads import PromptMaker
    pm = PromptMaker(FakeTokenizer(), 0)
    a = conversations.sharegpt_conversations(pm, n=6, min_prompt_tokens=8, max_prompt_tokens=64, reply_tokens=4)
    b = conversations.sharegpt_conversations(pm, n=6, min_prompt_tokens=8, max_prompt_tokens=64, reply_tokens=4)
    assert a == b and len(a) == 6
    for conv in a:
        turns = conv["conversations"]
        assert [t["from"] for t in turns][:2] == ["human", "gpt"]
        assert 8 <= len(turns[0]["value"].split()) <= 64
    assert len({c["conversations"][0]["value"] for c in a}) == 6  # nothing shared
    sha = conversations.write_sharegpt(tmp_path / "c.json", a)
    assert json.loads((tmp_path / "c.json").read_text()) == a
    assert sha == conversations.write_sharegpt(tmp_path / "d.json", b)
    with pytest.raises(ValueError, match="1024"):
        conversations.sharegpt_conversations(pm, n=1, min_prompt_tokens=8, max_prompt_tokens=2048, reply_tokens=4)


# -- the shrunk KV cache ---------------------------------------------------------------------
def test_the_shrunk_cache_replaces_the_platforms_flags(tmp_path):
    spec = SimpleNamespace(experiment="pressure", params=PRESSURE)
    flags = experiment_flags(spec)
    assert flags == {"--num-gpu-blocks-override": "9", "--block-size": "16"}
    server = {"max_model_len": 128, "extra_args": ["--block-size", "32", "--kv-cache-memory-bytes", "1"]}
    args = plan("apc", {"prefix_caching": True}, server=server, model={"source": "tiny"}, run_dir=tmp_path,
                flags=flags).vllm_args
    assert args.count("--block-size") == 1 and args[args.index("--block-size") + 1] == "16"
    assert args[args.index("--num-gpu-blocks-override") + 1] == "9"
    assert "--kv-cache-memory-bytes" in args  # the fixed KV cache stays; the override caps it
    assert experiment_flags(SimpleNamespace(experiment="pressure", params={**PRESSURE, "num_gpu_blocks": None,
                                                                            "block_size": None})) == {}
    assert experiment_flags(SimpleNamespace(experiment="random_overhead", params={})) == {}


def test_config_refuses_a_cache_too_small_for_max_model_len(config):
    import copy
    cfg = copy.deepcopy(config)
    limit = cfg["platforms"]["cpu"]["server"]["max_model_len"]
    cfg["platforms"]["cpu"]["experiments"]["pressure"].update(num_gpu_blocks=limit // 128, block_size=128)
    with pytest.raises(ConfigError, match="num_gpu_blocks >= "):
        check(cfg)
    need, how = prompt_tokens_needed("pressure", PRESSURE, 16)
    assert need == 64 + 8 + 4 and "output_tokens" in how
    assert prompt_tokens_needed("miss", MISS, 16)[0] == 64 + 4


# -- the experiments' phases, on stand-ins ---------------------------------------------------
class FakeServers:
    def __init__(self, events):
        self.events = events

    def start(self, name="main", *, connector=True):
        self.events.append("start")

    def stop(self, *names, lmcache_server=False):
        self.events.append(("stop", lmcache_server))

    def target(self, name="main"):
        return None


class FakeRecorder:
    def __init__(self, meta):
        self.meta, self.prompts = meta, {}

    async def phase(self, target, kind, prompts, *, name=None, **fields):
        name = name or results.phase_name(kind)
        self.meta.add_phase(name, results.Phase(kind=kind, n_requests=len(prompts), wall_s=0.0, counters={},
                                                **fields))
        self.prompts[name] = prompts
        return []


class FakeLoadgen:
    def __init__(self):
        self.loads = []

    async def phase(self, target, kind, load, *, name=None):
        self.loads.append((kind, load))
        return {}


def a_meta(experiment, arm="apc", params=None, status="ok", reason=None, platform="h200"):
    return results.RunMeta(status=status, platform=platform, experiment=experiment, arm=arm, arm_config={},
                           params=params or {}, accelerator={}, versions={}, model={}, server={}, client={},
                           config_hash=None, git_commit=None, started_at="", finished_at=None, phases={},
                           reason=reason)


def _context(experiment, params, tmp_path, events):
    spec = SimpleNamespace(experiment=experiment, params=params, log_dir=tmp_path, arm={}, client={"max_tokens": 4})
    from kvreuse.workloads import PromptMaker
    return experiments.Context(spec, SimpleNamespace(lmcache=None), FakeServers(events),
                               FakeRecorder(a_meta(experiment, params=params)), FakeLoadgen(),
                               PromptMaker(FakeTokenizer(), 0))


def test_pressure_runs_prefix_repetition_then_the_conversations(tmp_path):
    events = []
    c = _context("pressure", PRESSURE, tmp_path, events)
    asyncio.run(experiments.EXPERIMENTS["pressure"](c, PRESSURE))
    assert events == ["start"]  # the job's Servers stop it
    (k1, pr), (k2, conv) = c.loadgen.loads
    assert (k1, pr.dataset, pr.num_prompts, pr.num_prefixes, pr.input_len, pr.suffix_len) == \
        ("prefix_repetition", "prefix_repetition", 12, 4, 64, 8)
    assert pr.request_rate == "inf" and pr.max_concurrency == 2 and pr.output_len == 4
    assert (k2, conv.dataset, conv.num_prompts) == ("conversation", "sharegpt", 5)
    assert json.loads(conv.dataset_path.read_text())[0]["conversations"][0]["from"] == "human"
    assert c.meta.params["conversation_sha256"]
    assert [p.kind for p in c.meta.phases.values()] == ["warmup"]


def test_miss_runs_both_cases_per_length_with_the_same_prompts_in_every_server_run(tmp_path):
    assert "miss" in experiments.SERVER_RUNS and alternating.alternates("miss")
    prompts = []
    for run in range(2):
        events = []
        c = _context("miss", MISS, tmp_path, events)
        asyncio.run(experiments.SERVER_RUNS["miss"](c, MISS, run))
        assert events == ["start", ("stop", True)]
        kinds = [(p.kind, p.prefix_tokens) for p in c.meta.phases.values()]
        assert kinds == [("warmup", None), ("miss", 16), ("populate", 16), ("vram_hit", 16),
                         ("miss", 64), ("populate", 64), ("vram_hit", 64)]
        assert all(p.server_run == run for p in c.meta.phases.values())
        rec = c.recorder.prompts
        hits, populated = rec[f"vram_hit_64_run{run}"], rec[f"populate_64_run{run}"]
        assert len(populated) == 2 and hits == [populated[0], populated[1], populated[0]]  # in turn
        assert len({tuple(p) for p in rec[f"miss_64_run{run}"]}) == 3 and all(len(p) == 64 for p in hits)
        assert not {tuple(p) for p in rec[f"miss_64_run{run}"]} & {tuple(p) for p in populated}
        prompts.append({k.rsplit("_run", 1)[0]: v for k, v in rec.items() if not k.startswith("warmup")})
    assert prompts[0] == prompts[1]  # the same requests in every server run (and arm)


def test_dag_runs_miss_as_one_alternating_job(config):
    assert dag.job_stems(config, "miss", "cpu") == [alternating.JOB]
    assert dag.job_stems(config, "pressure", "cpu") == config["experiments"]["pressure"]["arms"]
    assert {"pressure", "miss"} <= set(dag.tables(config))


# -- the tables from fake runs ---------------------------------------------------------------
def _records(experiment, arm, kind, ttfts, *, platform="h200", prefix_tokens=None, server_run=None, itl=1.0):
    return [dict(platform=platform, experiment=experiment, arm=arm, phase=kind, phase_kind=kind, seq=i,
                 prompt_tokens=72, cached_tokens=None, output_tokens=4, ttft_ms=t, itl_ms=[itl] * 3,
                 e2e_ms=t + 3 * itl, error=None, prefix_tokens=prefix_tokens, server_run=server_run, repeat=None)
            for i, t in enumerate(ttfts)]


def _bench_phase(kind, counters, rps):
    return results.Phase(kind=kind, n_requests=12, wall_s=1.0, counters=counters, request_rate="inf",
                         max_concurrency=2, bench_summary={"completed": 12, "mean_ttft_ms": 1.0, "median_ttft_ms": 1.0,
                                                           "p99_ttft_ms": 2.0, "median_itl_ms": 1.0,
                                                           "request_throughput": rps, "output_throughput": 4 * rps})


def test_pressure_table_proves_eviction_by_counters_and_compares_the_store_with_apc():
    # 12 prompts on 4 prefixes of 64 tokens in blocks of 16: 8 prompts x 48 reusable tokens
    assert no_eviction_hits(PRESSURE, 12) == 8 * 48
    metas = []
    for arm, hits, ext, rps in (("apc", 96, 0, 2.0), ("lmcache_cpu", 96, 240, 2.5)):
        m = a_meta("pressure", arm, PRESSURE)
        m.add_phase("prefix_repetition", _bench_phase("prefix_repetition", {
            "vllm:prefix_cache_queries": 864, "vllm:prefix_cache_hits": hits,
            "vllm:external_prefix_cache_hits": ext}, rps))
        metas.append(m)
    metas.append(a_meta("pressure", "vllm_offload_cpu", PRESSURE, status="not_run", reason="needs CUDA"))
    df = pd.DataFrame(_records("pressure", "apc", "prefix_repetition", [100.0 + i for i in range(12)], itl=1.0)
                      + _records("pressure", "lmcache_cpu", "prefix_repetition", [60.0 + i for i in range(12)],
                                 itl=2.0))
    t = pressure_table(df, metas)
    apc = t[t.arm == "apc"].iloc[0]
    assert apc.apc_hit_fraction == pytest.approx(96 / 384) and apc.evicting
    lm = t[t.arm == "lmcache_cpu"].iloc[0]
    assert lm.store_hit_tokens == 240 and lm.reuse_hit_fraction == pytest.approx(336 / 384)
    assert lm.ttft_saved_median_ms == pytest.approx(40.0) and lm.ttft_saved_ci95_lo_ms > 0
    assert lm.itl_added_median_ms == pytest.approx(1.0)
    assert lm.request_throughput_change_pct == pytest.approx(25.0)
    assert t[t.arm == "vllm_offload_cpu"].iloc[0].reason == "needs CUDA"
    ctx = paper_pressure.pressure_context(t)
    assert ctx["eviction"][0]["evicting"] and ctx["arms"][0]["ttft_direction"] == "faster"
    assert ctx["arms"][0]["itl_direction"] == "slower"  # every ITL one ms longer than APC's: a CI at +1
    assert [r["arm"] for r in ctx["not_run"]] == ["vllm_offload_cpu"]
    assert ctx["without_reference"] == []
    # APC alone not measured (lease 4 on the H200): the store arm is said to have nothing to compare with
    no_apc = paper_pressure.pressure_context(pressure_table(df[df.arm != "apc"], [m for m in metas if m.arm != "apc"]))
    assert no_apc["arms"] == [] and [(r["arm"], r["workload"]) for r in no_apc["without_reference"]] == [
        ("lmcache_cpu", "prefix_repetition")]
    assert list(pressure_table(df.iloc[:0], []).columns)[:2] == ["platform", "arm"]  # no runs: still a header


def test_miss_table_pairs_prompts_across_server_runs_and_reads_the_hits():
    metas, rows = [], []
    for arm, slow in (("apc", 1.0), ("vllm_offload_cpu", 1.1)):
        m = a_meta("miss", arm, MISS)
        for run in range(2):
            m.add_phase(f"miss_64_run{run}", results.Phase(kind="miss", n_requests=3, wall_s=1.0, prefix_tokens=64,
                                                           server_run=run, counters={"vllm:prompt_tokens": 192}))
            m.add_phase(f"vram_hit_64_run{run}", results.Phase(
                kind="vram_hit", n_requests=3, wall_s=1.0, prefix_tokens=64, server_run=run,
                counters={"vllm:prompt_tokens": 192, "vllm:prefix_cache_hits": 144,
                          "vllm:kv_offload_store_bytes": 1e6 if arm != "apc" else 0}))
            rows += _records("miss", arm, "miss", [slow * (50 + i + run) for i in range(3)], prefix_tokens=64,
                             server_run=run)
            rows += _records("miss", arm, "vram_hit", [10.0 + i for i in range(3)], prefix_tokens=64, server_run=run)
        metas.append(m)
    t = miss_table(pd.DataFrame(rows), metas)
    off = t[(t.arm == "vllm_offload_cpu") & (t.case == "miss")].iloc[0]
    assert off.server_runs == 2 and off.n == 6
    assert off.ttft_delta_pct == pytest.approx(10.0) and off.ttft_delta_ci95_lo_pct > 0
    hit = t[(t.arm == "vllm_offload_cpu") & (t.case == "vram_hit")].iloc[0]
    assert hit.ttft_delta_pct == pytest.approx(0.0) and hit.hit_fraction == pytest.approx(0.75)
    assert hit.stored_bytes == 2e6
    assert "ttft_delta_pct" not in t.columns[t.loc[t.arm == "apc"].notna().all()]
    ctx = paper_pressure.miss_context(t)
    assert {(r["case"], r["direction"]) for r in ctx["arms"]} >= {("miss", "slower")}
