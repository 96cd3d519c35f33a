"""LMCache arms without CUDA or LMCache: the generated configs and command lines, the not-run
path on CPU, the restart and sweep logic (on a stand-in session), store listing, log and
metric parsing and the preflight (the reload-vs-recompute tables: tests/test_breakeven.py)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kvreuse import experiments, metrics, results, verdict
from kvreuse import plan as arm_plan
from kvreuse.config import check, server_config
from kvreuse.errors import ConfigError, PreflightError
from kvreuse.lmcache import flags, logs, settings
from kvreuse.lmcache import store as lmcache_store
from kvreuse.server import vllm_argv

LMCACHE_ARMS = ["lmcache_cpu", "lmcache_disk", "lmcache_fs", "lmcache_mp", "lmcache_mp_l2"]
REPO_LLAMA = Path(__file__).resolve().parents[1] / "workflow/resources/llama-3.1-8b/config.json"
PORTS = {"internal_api": 41001, "mp": 42001, "http": 43001}


@pytest.fixture
def h100(config):
    return server_config(config, "h100"), config["models"]["llama-3.1-8b"]


def make_plan(config, h100, arm, tmp_path):
    server, model = h100
    return arm_plan.plan(arm, config["arms"][arm], server=server, model=model, run_dir=tmp_path / "logs",
                     has_cuda=True, store_root=tmp_path / "store" / "restart", run_id="r1",
                     ports=dict(PORTS))


def kv_config(plan) -> dict:
    i = plan.vllm_args.index("--kv-transfer-config")
    assert plan.vllm_args.count("--kv-transfer-config") == 1
    return json.loads(plan.vllm_args[i + 1])


# -- config ----------------------------------------------------------------------------------
def test_config_has_the_five_arms_in_the_restart_experiment(config, repo):
    from snakemake.utils import validate

    # a copy: snakemake's validate writes the schema's defaults into the config it is given,
    # and this one is the session's (kvreuse.config.validate, the pipeline's, writes none)
    validate(copy.deepcopy(config), str(repo / "workflow/schemas/config.schema.yaml"))
    check(config)
    assert set(LMCACHE_ARMS) <= set(config["experiments"]["restart"]["arms"])
    for a in LMCACHE_ARMS:
        settings.check_arm(a, config["arms"][a]["lmcache"])


@pytest.mark.parametrize("cfg, key, allowed", [
    ({"mode": "remote"}, "mode", "in_process, server"),
    ({"mode": "server", "store": "local_disk"}, "store", "cpu, fs"),
    ({"mode": "in_process", "store": "s3"}, "store", "cpu, local_disk, fs"),
    ({"mode": "in_process", "chunk_size": 100}, "chunk_size", "multiple of 16"),
    ({"mode": "in_process", "store": "fs"}, "disk_gb", "required"),
    ({"mode": "in_process", "cpu_gb": 0}, "cpu_gb", "> 0"),
    ({"mode": "in_process", "hash_algorithm": "blake3"}, "hash_algorithm", "sha256_cbor"),
    ({"mode": "server", "hash_algorithm": "xxhash"}, "hash_algorithm", "blake3"),
    ({"mode": "in_process", "size": 3}, "size", "allowed: mode"),
    ({"mode": "in_process", "server_args": ["--x"]}, "server_args", "config_overrides"),
    ({"mode": "in_process", "config_overrides": {"chunk_size": 16}}, "config_overrides.chunk_size",
     "except"),
])
def test_check_arm_names_the_key_and_what_is_allowed(cfg, key, allowed):
    with pytest.raises(ConfigError) as e:
        settings.check_arm("x", cfg)
    assert f"arms.x.lmcache.{key}" in str(e.value) and allowed in str(e.value)


def test_arm_keys_and_defaults_are_the_schemas(repo):
    """One definition: the schema's lmcache_arm block; the code adds only cross-key rules."""
    arm = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())[
        "definitions"]["lmcache_arm"]["properties"]
    assert settings.ARM_KEYS == tuple(arm)
    defaults = {k: p["default"] for k, p in arm.items() if "default" in p}
    assert settings.settings({"mode": "in_process"}) == {**defaults, "mode": "in_process",
                                                         "hash_algorithm": "sha256_cbor"}
    assert settings.settings({"mode": "server"})["hash_algorithm"] == "blake3"
    assert settings.MODES == tuple(arm["mode"]["enum"]) == tuple(settings.STORES)
    assert {st for stores in settings.STORES.values() for st in stores} == set(arm["store"]["enum"])
    assert set(settings.IN_PROCESS_HASHES) | set(settings.SERVER_HASHES) == set(
        arm["hash_algorithm"]["enum"])
    assert all(p.get("description") for p in arm.values())


def test_restart_lmcache_server_needs_a_server_arm(config):
    bad = {**config, "arms": {**config["arms"], "lmcache_fs": {**config["arms"]["lmcache_fs"],
                                                                "restart_lmcache_server": True}}}
    with pytest.raises(ConfigError, match="arms.lmcache_fs.restart_lmcache_server"):
        check(bad)


# -- generated configs and command lines -----------------------------------------------------
@pytest.mark.parametrize("arm, store", [
    ("lmcache_cpu", {}),
    ("lmcache_disk", {"local_disk": "file://{store}/local_disk/", "max_local_disk_size": 50.0}),
    ("lmcache_fs", {"remote_storage_plugins": ["fs"], "remote_serde": "naive",
                    "extra_config": {"remote_storage_plugin.fs.base_path": "{store}/fs"}}),
])
def test_in_process_arm_config_file_flags_and_env(config, h100, tmp_path, arm, store):
    p = make_plan(config, h100, arm, tmp_path)
    run_store = (tmp_path / "store" / "restart" / arm / "r1").absolute()
    expected = {"chunk_size": 256, "local_cpu": True,
                "max_local_cpu_size": float(config["arms"][arm]["lmcache"]["cpu_gb"]),
                "pre_caching_hash_algorithm": "sha256_cbor", "save_unfull_chunk": False,
                "internal_api_server_enabled": True, "internal_api_server_host": "127.0.0.1",
                "internal_api_server_port_start": PORTS["internal_api"] - 1,
                "internal_api_server_include_index_list": [1]}
    expected.update(json.loads(json.dumps(store).replace("{store}", str(run_store))))
    written = yaml.safe_load((tmp_path / "logs" / "lmcache.yaml").read_text())
    assert written == expected == p.lmcache_config
    assert p.env["LMCACHE_CONFIG_FILE"] == str((tmp_path / "logs" / "lmcache.yaml").absolute())
    assert p.env["PYTHONHASHSEED"] == "0" and p.env["LMCACHE_TRACK_USAGE"] == "false"
    assert kv_config(p) == {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    # vLLM's own block hash matches the one LMCache is told to use
    i = p.vllm_args.index("--prefix-caching-hash-algo")
    assert p.vllm_args[i + 1] == "sha256_cbor" and "--enable-prefix-caching" in p.vllm_args
    assert p.lmcache_server is None
    assert p.lmcache["metrics_urls"] == [f"http://127.0.0.1:{PORTS['internal_api']}/metrics"]
    for d in p.lmcache["store_paths"]:
        assert os.path.isdir(d) and d.startswith(str(run_store))


@pytest.mark.parametrize("arm", ["lmcache_mp", "lmcache_mp_l2"])
def test_server_arm_command_line_and_connector(config, h100, tmp_path, arm):
    p = make_plan(config, h100, arm, tmp_path)
    run_store = (tmp_path / "store" / "restart" / arm / "r1").absolute()
    argv = [sys.executable, "-m", "lmcache.cli.main", "server", "--host", "127.0.0.1",
            "--port", "42001", "--http-host", "127.0.0.1", "--http-port", "43001",
            "--chunk-size", "256", "--hash-algorithm", "blake3",
            "--l1-size-gb", str(float(config["arms"][arm]["lmcache"]["cpu_gb"])), "--eviction-policy", "LRU",
            "--eviction-trigger-watermark",
            str(float(config["arms"][arm]["lmcache"].get("l1_eviction_watermark", 0.8)))]
    if arm == "lmcache_mp_l2":
        argv += ["--l2-adapter", json.dumps({"type": "fs", "base_path": f"{run_store}/l2"},
                                            separators=(",", ":"))]
    assert p.lmcache_server["argv"] == argv
    assert p.lmcache_server["health_url"] == "http://127.0.0.1:43001/healthcheck"
    assert p.lmcache_server["metrics_url"] == "http://127.0.0.1:43001/metrics"
    assert kv_config(p) == {"kv_connector": "LMCacheMPConnector", "kv_role": "kv_both",
                            "kv_connector_extra_config": {
                                "lmcache.mp.host": "tcp://127.0.0.1", "lmcache.mp.port": 42001,
                                "lmcache.mp.hash_algorithm": "blake3"}}
    assert p.lmcache_config is None and "LMCACHE_CONFIG_FILE" not in p.env
    assert not (tmp_path / "logs" / "lmcache.yaml").exists()
    assert config["arms"][arm].get("restart_lmcache_server", False) == (arm == "lmcache_mp_l2")


def test_vllm_command_line_carries_the_connector(config, h100, tmp_path):
    p = make_plan(config, h100, "lmcache_fs", tmp_path)
    argv = vllm_argv(tmp_path / "model", "llama-3.1-8b", 8000, p.vllm_args)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    i = argv.index("--kv-transfer-config")
    assert json.loads(argv[i + 1])["kv_connector"] == "LMCacheConnectorV1"
    args, env = flags.apc_only(p)
    j = p.vllm_args.index("--kv-transfer-config")
    assert args == p.vllm_args[:j] + p.vllm_args[j + 2:] and "--enable-prefix-caching" in args
    assert "LMCACHE_CONFIG_FILE" not in env and env["PYTHONHASHSEED"] == "0"


def test_each_run_gets_its_own_store_folder(config, h100, tmp_path):
    server, model = h100
    a = arm_plan.plan("lmcache_fs", config["arms"]["lmcache_fs"], server=server, model=model,
                  run_dir=tmp_path / "a", has_cuda=True, store_root=tmp_path / "s")
    b = arm_plan.plan("lmcache_fs", config["arms"]["lmcache_fs"], server=server, model=model,
                  run_dir=tmp_path / "b", has_cuda=True, store_root=tmp_path / "s", run_id="other")
    assert a.lmcache["store_dir"] != b.lmcache["store_dir"]
    assert a.lmcache["ports"]["internal_api"] > 1024


# -- not run on CPU ----------------------------------------------------------------------------
@pytest.mark.parametrize("arm", ["lmcache_fs", "lmcache_mp_l2"])
def test_not_run_without_cuda_writes_an_empty_jsonl_and_a_meta(config, tmp_path, arm, repo):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "kvreuse-model.json").write_text(json.dumps({"name": "tiny-llama", "weights": "random"}))
    out = tmp_path / "raw" / "cpu" / "restart" / f"{arm}.jsonl"
    spec = experiments.RunSpec(
        platform="cpu", experiment="restart", arm_name=arm, arm=config["arms"][arm],
        params=config["experiments"]["restart"], model_name="tiny-llama",
        model=config["models"]["tiny-llama"], model_dir=model_dir,
        server=server_config(config, "cpu"), client=config["client"], out_jsonl=out,
        log_dir=tmp_path / "logs", config_hash="0" * 16, repo_dir=repo,
        lmcache_dir=tmp_path / "lmcache" / "cpu")
    meta = experiments.run(spec, has_cuda=False)
    assert out.read_text() == ""
    written = json.loads(out.with_suffix("").with_suffix(".meta.json").read_text())
    assert written == json.loads(json.dumps(meta))
    assert written["status"] == "not_run" and written["reason"] == "LMCache needs CUDA"
    assert written["arm"] == arm and written["arm_config"]["lmcache"] == config["arms"][arm]["lmcache"]
    assert written["server"]["lmcache_config"] is None and written["phases"] == {}
    assert not (tmp_path / "lmcache").exists()  # no store made for a run that does not run


# -- the experiments on a stand-in session ------------------------------------------------------
class FakeServers:
    """Records starts and stops; no process."""

    def __init__(self, events):
        self.events = events

    def start(self, name="main", *, connector=True):
        self.events.append(("start", connector))

    def stop(self, *names, lmcache_server=False):
        self.events.append(("stop", lmcache_server))

    def target(self, name="main"):
        return None


class FakeRecorder:
    """Books each phase with the counters of ``hits`` and answers with ``outputs``; no request
    (each is recorded, prompt length and output, as the recorder would)."""

    def __init__(self, meta, hits, outputs, events):
        self.meta, self.hits, self.outputs, self.events = meta, hits, outputs, events
        self.records, self.sent = [], []  # the records; (phase, prompt) of every request

    async def phase(self, target, kind, prompts, *, name=None, **fields):
        name = name or results.phase_name(kind)
        self.meta.add_phase(name, results.Phase(kind=kind, n_requests=len(prompts), wall_s=0.0,
                                                counters=dict(self.hits.get(name, {})), **fields))
        self.events.append(("phase", name))
        out = self.outputs.get(name, [7, 8, 9])
        self.sent += [(name, tuple(p)) for p in prompts]
        repeated = {k: fields[k] for k in ("prefix_tokens", "repeat") if fields.get(k) is not None}
        self.records += [results.RequestRecord(
            platform=self.meta.platform, experiment=self.meta.experiment, arm=self.meta.arm, phase=name,
            phase_kind=kind, seq=i, prompt_tokens=len(p), cached_tokens=None, output_tokens=len(out),
            ttft_ms=1.0, itl_ms=[], e2e_ms=2.0, error=None, output_token_ids=out, **repeated)
            for i, p in enumerate(prompts)]
        return [SimpleNamespace(output_token_ids=out) for _ in prompts]


OUTCOME = ("store_after_stop", "persisted", "persisted_hit_tokens", "output_equal", "output_equal_cold_reference")


class FakeSession:
    """Records what restart()/prefix_sweep() do (``ctx``: the experiments' Context, with stand-in
    servers and recorder); hit counters come from ``hits``."""

    def __init__(self, plan, arm, hits, outputs=None):
        self.events = []
        meta = results.RunMeta(status="ok", platform="h100", experiment="restart", arm="a", arm_config=arm,
                               params={}, accelerator={}, versions={}, model={}, server={}, client={},
                               config_hash=None, git_commit=None, started_at="", finished_at=None,
                               phases={})
        spec = SimpleNamespace(arm=arm, server={"max_model_len": 4096}, client={"max_tokens": 16},
                               log_dir=None, params={})
        self.ctx = experiments.Context(spec, plan, FakeServers(self.events),
                                       FakeRecorder(meta, hits, outputs or {}, self.events), None,
                                       SimpleNamespace(tokens=lambda name, n: [hash(name) % 1000] * n))

    def run(self, experiment, params: dict) -> None:
        """Run ``experiment`` with ``params`` (also the spec's, which the warm-ups read; the
        spec's experiment: the function's name, for the schema's defaults of its keys)."""
        self.ctx.spec.params = params
        self.ctx.spec.experiment = experiment.__name__
        asyncio.run(experiment(self.ctx, params))

    @property
    def phases(self) -> dict:
        return {name: dataclasses.asdict(ph) for name, ph in self.ctx.meta.phases.items()}

    @property
    def extra_meta(self) -> dict:
        """The run's outcome fields that the experiment set."""
        return {k: getattr(self.ctx.meta, k) for k in OUTCOME if getattr(self.ctx.meta, k) is not None}

    @property
    def verdict(self) -> dict:
        """The restart verdict that aggregation gives this run (kvreuse.verdict)."""
        import pandas as pd

        recs = pd.DataFrame([dataclasses.asdict(r) for r in self.ctx.recorder.records])
        return verdict.run_verdict(verdict.prefix_verdicts(self.ctx.meta, recs))


RESTART = {"n_warm": 2, "n_post_restart_steady": 2, "prefix_tokens": 1024, "suffix_tokens": 16}


def test_restart_verdict_comes_from_external_hits_for_lmcache(config, h100, tmp_path):
    p = make_plan(config, h100, "lmcache_fs", tmp_path)
    # vLLM's own prefix hits after the restart do not count for an LMCache arm
    s = FakeSession(p, config["arms"]["lmcache_fs"],
                    {"post_restart_first_1024_0": {"vllm:prefix_cache_hits": 512.0}})
    s.run(experiments.restart, {**RESTART, "cold_reference": "unseen_prefix"})
    assert s.verdict["verdict"] == verdict.NOT_PERSISTED and s.verdict["output_equal"] is True
    assert [e for e in s.events if e[0] != "phase"] == [("start", True), ("stop", False), ("start", True)]
    # a warm-up (never-seen prompts) after each start; the run itself no longer judges
    assert list(s.phases) == ["warmup", "populate_1024_0", "warm_1024_0", "warmup_post_restart",
                              "post_restart_first_1024_0", "post_restart_cold_1024_0", "post_restart_steady"]
    assert "store_after_stop" in s.extra_meta and "persisted" not in s.extra_meta
    # all the reusable tokens from the store, but another output: partial, not persisted
    s = FakeSession(p, config["arms"]["lmcache_fs"],
                    {"post_restart_first_1024_0": {"vllm:external_prefix_cache_hits": 1024.0}},
                    outputs={"post_restart_first_1024_0": [1, 2]})
    s.run(experiments.restart, RESTART)
    assert s.verdict["verdict"] == verdict.PARTIAL and s.verdict["persisted_hit_tokens"] == 1024.0
    assert s.verdict["hit_fraction"] == 1.0 and s.verdict["output_equal"] is False
    s = FakeSession(p, config["arms"]["lmcache_fs"],
                    {"post_restart_first_1024_0": {"vllm:external_prefix_cache_hits": 1024.0}})
    s.run(experiments.restart, RESTART)
    assert s.verdict["verdict"] == verdict.PERSISTED and s.verdict["reusable_tokens"] == 1024


def test_restart_warmups_come_before_populate_and_after_the_restart(config, h100, tmp_path):
    p = make_plan(config, h100, "lmcache_mp", tmp_path)
    s = FakeSession(p, config["arms"]["lmcache_mp"], {})
    s.run(experiments.restart, {**RESTART, "warmup_requests": 5})
    assert list(s.phases)[:3] == ["warmup", "populate_1024_0", "warm_1024_0"]
    assert list(s.phases)[3:5] == ["warmup_post_restart", "post_restart_first_1024_0"]
    assert ("stop", False) in s.events  # lmcache_mp: only vLLM restarts
    # the warm-up after the restart is never-seen: none of its prompts was sent before
    sent = s.ctx.recorder.sent
    after = {p for name, p in sent if name == "warmup_post_restart"}
    assert len(after) == 5 and not after & {p for name, p in sent if name != "warmup_post_restart"}


def test_restart_fresh_apc_reference_and_server_restart(config, h100, tmp_path):
    p = make_plan(config, h100, "lmcache_mp_l2", tmp_path)
    s = FakeSession(p, config["arms"]["lmcache_mp_l2"], {})
    s.run(experiments.restart, {**RESTART, "cold_reference": "fresh_apc"})
    assert [e for e in s.events if e[0] != "phase"] == [
        ("start", True), ("stop", True), ("start", True), ("stop", True), ("start", False)]
    assert "cold_reference_1024_0" in s.phases and s.extra_meta["output_equal_cold_reference"] is True
    assert list(s.phases)[-2:] == ["warmup_cold_reference", "cold_reference_1024_0"]  # a warm-up after that start too


def test_restart_apc_arm_verdict_from_its_own_hits(config, h100, tmp_path):
    server, model = h100
    p = arm_plan.plan("apc", config["arms"]["apc"], server=server, model=model, run_dir=tmp_path)
    # 16 of 1024 reusable tokens: no longer "persisted" (it was, as hits > 0): partial
    s = FakeSession(p, config["arms"]["apc"], {"post_restart_first_1024_0": {"vllm:prefix_cache_hits": 16.0}})
    s.run(experiments.restart, {**RESTART, "cold_reference": "none"})
    assert s.verdict["verdict"] == verdict.PARTIAL and s.verdict["hit_fraction"] == pytest.approx(16 / 1024)
    assert "store_after_stop" not in s.extra_meta
    assert not any(ph["kind"] == "post_restart_cold" for ph in s.phases.values())


def test_restart_with_n_cold_interleaves_first_and_cold_per_prefix(config, h100, tmp_path):
    p = make_plan(config, h100, "lmcache_fs", tmp_path)
    hits = {"post_restart_first_1024_0": {"vllm:external_prefix_cache_hits": 1024.0},
            "post_restart_first_1024_1": {"vllm:external_prefix_cache_hits": 512.0},
            "post_restart_first_1024_2": {"vllm:external_prefix_cache_hits": 1024.0}}
    s = FakeSession(p, config["arms"]["lmcache_fs"], hits)
    s.run(experiments.restart, {**RESTART, "n_cold": 3})
    assert list(s.phases) == [
        "warmup", "populate_1024_0", "warm_1024_0", "populate_1024_1", "warm_1024_1", "populate_1024_2", "warm_1024_2",
        "warmup_post_restart", "post_restart_first_1024_0", "post_restart_cold_1024_0", "post_restart_first_1024_1",
        "post_restart_cold_1024_1", "post_restart_first_1024_2", "post_restart_cold_1024_2", "post_restart_steady"]
    assert [s.phases[f"post_restart_first_1024_{i}"]["repeat"] for i in range(3)] == [0, 1, 2]
    assert all(s.phases[f"post_restart_cold_1024_{i}"]["after_restart"] for i in range(3))
    # each prefix is its own, and its first request after the restart is the populate prompt
    firsts = [r for r in s.ctx.recorder.records if r.phase_kind == "post_restart_first"]
    assert len({r.prompt_tokens for r in firsts}) == 1 and len(firsts) == 3
    v = s.verdict
    assert v["verdict"] == verdict.PERSISTED and v["hit_fraction"] == 1.0  # the median prefix
    assert v["hit_fraction_min"] == 0.5 and v["n_prefixes"] == 3 and v["n_prefixes_persisted"] == 2


def test_restart_over_prefix_lengths_populates_all_then_interleaves_reload_and_recompute(config, h100, tmp_path):
    p = make_plan(config, h100, "lmcache_fs", tmp_path)
    # prefix 1 of 1024 tokens reloads half of its reusable tokens; the others all of theirs
    hits = {f"post_restart_first_{n}_{i}": {"vllm:external_prefix_cache_hits": n / (2 if (n, i) == (1024, 1) else 1)}
            for n in (256, 1024) for i in range(2)}
    s = FakeSession(p, config["arms"]["lmcache_fs"], hits, outputs={"post_restart_first_256_1": [1]})
    s.run(experiments.restart, {**RESTART, "n_cold": 2, "prefix_tokens_list": [256, 1024]})
    assert list(s.phases) == [
        "warmup", "populate_256_0", "warm_256_0", "populate_256_1", "warm_256_1",
        "populate_1024_0", "warm_1024_0", "populate_1024_1", "warm_1024_1", "warmup_post_restart",
        "post_restart_first_256_0", "post_restart_cold_256_0", "post_restart_first_256_1", "post_restart_cold_256_1",
        "post_restart_first_1024_0", "post_restart_cold_1024_0", "post_restart_first_1024_1",
        "post_restart_cold_1024_1", "post_restart_steady"]
    assert [e for e in s.events if e[0] != "phase"] == [("start", True), ("stop", False), ("start", True)]
    ph = s.phases
    assert (ph["post_restart_cold_1024_1"]["prefix_tokens"], ph["post_restart_cold_1024_1"]["repeat"]) == (1024, 1)
    assert ph["post_restart_steady"]["prefix_tokens"] == 256 and ph["post_restart_steady"]["n_requests"] == 2
    sent = dict(s.ctx.recorder.sent)  # a reload is its populate prompt; a recompute is new, of its length
    for n in (256, 1024):
        for i in range(2):
            assert sent[f"post_restart_first_{n}_{i}"] == sent[f"populate_{n}_{i}"]
            assert len(sent[f"post_restart_cold_{n}_{i}"]) == len(sent[f"populate_{n}_{i}"]) == n + 16
            assert sent[f"post_restart_cold_{n}_{i}"] != sent[f"populate_{n}_{i}"]
    # steady: later prompts on the first prefix (its prefix, other questions)
    steady = [p for name, p in s.ctx.recorder.sent if name == "post_restart_steady"]
    assert all(q[:256] == sent["populate_256_0"][:256] and q != sent["populate_256_0"] for q in steady)
    # one verdict per prefix, a prefix being (length, i): outputs and hits are not mixed up across lengths
    import pandas as pd
    recs = pd.DataFrame([dataclasses.asdict(r) for r in s.ctx.recorder.records])
    per = {(v.prefix_tokens, v.repeat): v for v in verdict.prefix_verdicts(s.ctx.meta, recs)}
    assert list(per) == [(256, 0), (256, 1), (1024, 0), (1024, 1)]
    assert per[256, 1].output_equal is False and per[256, 1].verdict == verdict.PARTIAL
    assert per[1024, 1].hit_fraction == 0.5 and per[1024, 0].verdict == verdict.PERSISTED
    assert per[256, 0].reusable_tokens == 256 and per[1024, 0].reusable_tokens == 1024
    assert s.verdict["n_prefixes"] == 4 and s.verdict["n_prefixes_persisted"] == 2


def test_cold_warm_interleaves_n_cold_prefixes(config, h100, tmp_path):
    server, model = h100
    p = arm_plan.plan("apc", config["arms"]["apc"], server=server, model=model, run_dir=tmp_path)
    s = FakeSession(p, config["arms"]["apc"], {})
    s.run(experiments.cold_warm, {"n_cold": 3, "n_warm": 2, "prefix_tokens": 256,
                                  "suffix_tokens": 16, "warmup_requests": 1})
    assert list(s.phases) == ["warmup", "cold_0", "warm_0", "cold_1", "warm_1", "cold_2", "warm_2"]
    assert [s.phases[f"warm_{i}"]["n_requests"] for i in range(3)] == [2, 2, 2]
    assert [s.phases[f"cold_{i}"]["repeat"] for i in range(3)] == [0, 1, 2]


def test_prefix_sweep_reloads_after_a_restart_for_lmcache_arms(config, h100, tmp_path):
    p = make_plan(config, h100, "lmcache_fs", tmp_path)
    params = {"prefix_tokens_list": [256, 1024], "n_warm": 1, "suffix_tokens": 16,
              "warmup_requests": 0, "post_restart_reload": True}
    s = FakeSession(p, config["arms"]["lmcache_fs"], {})
    s.run(experiments.prefix_sweep, params)
    assert list(s.phases) == ["cold_256_0", "warm_256_0", "cold_1024_0", "warm_1024_0",
                              "reload_256_0", "recompute_256_0", "reload_1024_0", "recompute_1024_0"]
    assert s.phases["reload_1024_0"]["prefix_tokens"] == 1024
    s = FakeSession(p, config["arms"]["lmcache_fs"], {})
    s.run(experiments.prefix_sweep, {**params, "post_restart_reload": False})
    assert "reload_256_0" not in s.phases and ("stop", False) not in s.events
    # n_cold = 3, with warm-ups: per length cold i then its warm ones; after the restart a
    # never-seen warm-up, then reload i and recompute i of each length, interleaved
    s = FakeSession(p, config["arms"]["lmcache_fs"], {})
    s.run(experiments.prefix_sweep, {**params, "n_cold": 3, "warmup_requests": 1})
    names = list(s.phases)
    assert names[:7] == ["warmup", "cold_256_0", "warm_256_0", "cold_256_1", "warm_256_1", "cold_256_2",
                         "warm_256_2"]
    i = names.index("warmup_post_restart")
    assert names[i + 1:i + 7] == ["reload_256_0", "recompute_256_0", "reload_256_1", "recompute_256_1",
                                  "reload_256_2", "recompute_256_2"]
    assert len(names) == 1 + 2 * 2 * 3 + 1 + 2 * 2 * 3
    assert {(s.phases[n]["prefix_tokens"], s.phases[n]["repeat"]) for n in names if n.startswith("reload")} == {
        (n, i) for n in (256, 1024) for i in range(3)}


# -- store listing, logs, metrics ------------------------------------------------------------
def test_list_store_counts_files_and_bytes(config, h100, tmp_path):
    p = make_plan(config, h100, "lmcache_disk", tmp_path)
    root = p.lmcache["store_paths"][0]
    for i in range(3):
        with open(os.path.join(root, f"chunk{i}.pt"), "wb") as f:
            f.write(b"x" * (100 + i))
    got = lmcache_store.list_store(p)
    assert got["files"] == 3 and got["bytes"] == 303 and got["paths"][root]["files"] == 3
    assert got["page_cache_evicted_files"] in (0, 3)
    p = make_plan(config, h100, "lmcache_mp", tmp_path)
    assert lmcache_store.list_store(p)["files"] == 0 and "note" in lmcache_store.list_store(p)


def test_log_stats_reads_lmcache_retrieve_and_store_lines(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text("old line: Retrieved 9 out of 9 required tokens (from 9 total tokens). "
                   "size: 1.0000 gb, cost 1.0000 ms, throughput: 1.0 GB/s;\n")
    marks = logs.log_marks(tmp_path)
    with open(log, "a") as f:
        f.write("\x1b[32m[2026-11-24 10:00:00,000] LMCache INFO:\x1b[0m [req_id=cmpl-1] Retrieved 1024 "
                "out of 1024 required tokens (from 1040 total tokens). size: 0.1250 gb, cost "
                "20.5000 ms, throughput: 6.0976 GB/s; (cache_engine.py:986)\n")
        f.write("[req_id=cmpl-2] Stored 1024 out of total 1024 tokens. size: 0.1250 GB, cost 3.0000 ms, "
                "throughput: 41.6 GB/s; offload_time: 2.0 ms, put_time: 1.0 ms\n")
        f.write("lmcache.cuda_ops compiled extension not found; CudaDeviceOps stays on the torch baseline\n")
    got = logs.log_stats(marks)
    assert got["retrieves"] == 1 and got["retrieved_tokens"] == 1024
    assert got["retrieve_bytes"] == 1 << 27 and got["retrieve_ms"] == 20.5
    assert got["stores"] == 1 and got["store_bytes"] == 1 << 27
    assert got["kernel_fallback_logged"] is True


def test_metrics_parse_keeps_lmcache_families():
    text = "\n".join([
        "# TYPE lmcache:num_hit_tokens_total counter",
        'lmcache:num_hit_tokens_total{model_name="m",worker_id="0"} 1024.0',
        "# TYPE lmcache:time_to_retrieve histogram",
        'lmcache:time_to_retrieve_bucket{le="+Inf",model_name="m"} 1.0',
        'lmcache:time_to_retrieve_sum{model_name="m"} 0.02',
        'lmcache:time_to_retrieve_count{model_name="m"} 1.0',
        "# TYPE lmcache_mp_lookup_hit_tokens_total counter",
        'lmcache_mp_lookup_hit_tokens_total{model_name="m"} 768.0',
        "# TYPE lmcache_mp_transfer_phase_bytes_total counter",
        'lmcache_mp_transfer_phase_bytes_total{device_index="0",direction="h2d",phase="staging"} 100.0',
        'lmcache_mp_transfer_phase_bytes_total{device_index="0",direction="d2h",phase="staging"} 50.0',
        "# TYPE vllm:external_prefix_cache_hits_total counter",
        "vllm:external_prefix_cache_hits_total 1024.0", ""])
    got = metrics.parse(text)
    assert got["lmcache:num_hit_tokens"] == 1024.0
    assert got["lmcache:time_to_retrieve_sum"] == 0.02 and got["lmcache:time_to_retrieve_count"] == 1.0
    assert got["lmcache_mp_lookup_hit_tokens"] == 768.0
    assert got["lmcache_mp_transfer_phase_bytes"] == 150.0
    assert got["lmcache_mp_transfer_phase_bytes{direction=h2d,phase=staging}"] == 100.0
    assert got["vllm:external_prefix_cache_hits"] == 1024.0
    assert metrics.hit_tokens(got) == 1024.0


def test_scraper_skips_an_optional_url_that_does_not_answer():
    from kvreuse.server import free_port

    dead = f"http://127.0.0.1:{free_port()}/metrics"
    assert metrics.Scraper([], optional=(dead,)).scrape() == {}
    with pytest.raises(Exception):
        metrics.Scraper([dead]).scrape()


def test_finish_records_kernels_and_deletes_only_when_asked(config, h100, tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "probe_kernels",
                        lambda env: {"kernels": "loaded", "lmcache.cuda_ops": "loaded"})
    keep = {**config["arms"]["lmcache_fs"]["lmcache"], "delete_store": False}
    config = {**config, "arms": {**config["arms"], "lmcache_fs": {**config["arms"]["lmcache_fs"], "lmcache": keep}}}
    p = make_plan(config, h100, "lmcache_fs", tmp_path)
    (tmp_path / "logs" / "vllm.log").write_text("lmcache.cuda_ops compiled extension not found; ...\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(REPO_LLAMA.read_text())
    got = logs.finish(p, tmp_path / "logs", tmp_path / "model")
    assert got["cuda_kernels"] == "fallback" and got["fallback_log_line_seen"] is True
    assert got["kv_bytes_per_token"] == 128 * 1024  # Llama-3.1-8B in bf16
    assert os.path.isdir(p.lmcache["store_dir"])
    p.lmcache["delete_store"] = True
    assert logs.finish(p, tmp_path / "logs")["store_deleted"] is True
    assert not os.path.exists(p.lmcache["store_dir"])


def test_probe_kernels_without_lmcache_reports_unknown():
    got = logs.probe_kernels({})
    assert got["kernels"] in ("unknown", "loaded", "fallback")
    if "lmcache_error" in got:
        assert got["kernels"] == "unknown"


# -- preflight -------------------------------------------------------------------------------
def test_preflight_makes_folders_and_writes_configs(config, tmp_path):
    arms_used = {a: config["arms"][a] for a in LMCACHE_ARMS}
    runs = [["restart", a] for a in LMCACHE_ARMS] + [["prefix_sweep", "lmcache_fs"]]
    got = lmcache_store.preflight(tmp_path / "lm", arms_used, runs, has_cuda=False)
    assert got["status"] == "skipped" and got["reason"] == "LMCache needs CUDA"
    assert (tmp_path / "lm" / "prefix_sweep" / "lmcache_fs").is_dir()
    shown = json.loads((tmp_path / "lm" / "configs" / "lmcache_mp_l2.json").read_text())
    assert "--l2-adapter" in shown["lmcache_server"]["argv"]
    assert yaml.safe_load((tmp_path / "lm" / "configs" / "lmcache_disk" / "lmcache.yaml").read_text())[
        "max_local_disk_size"] == arms_used["lmcache_disk"]["lmcache"]["disk_gb"]
    small = {a: {**c, "lmcache": {**c["lmcache"], "cpu_gb": 0.001,
                                  **({"disk_gb": 2} if "disk_gb" in c["lmcache"] else {})}}
             for a, c in arms_used.items()}
    got = lmcache_store.preflight(tmp_path / "lm", small, runs, has_cuda=True)
    assert got["status"] == "ok" and got["checks"]["disk"]["required_bytes"] == 2 << 30


def test_preflight_fails_clearly(config, tmp_path):
    fs = {"lmcache_fs": config["arms"]["lmcache_fs"]}
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(PreflightError, match="not writable.*paths.lmcache"):
        lmcache_store.preflight(tmp_path / "file" / "lm", fs, [["restart", "lmcache_fs"]], has_cuda=True)
    huge = {"lmcache_fs": {**fs["lmcache_fs"], "lmcache": {**fs["lmcache_fs"]["lmcache"],
                                                            "disk_gb": 1e9, "cpu_gb": 0.001}}}
    with pytest.raises(PreflightError, match="disk_gb"):
        lmcache_store.preflight(tmp_path / "lm", huge, [["restart", "lmcache_fs"]], has_cuda=True)


def _fake_lmcache(root, native: bool, device: str = "cuda"):
    """A stand-in shaped like LMCache 0.5.3: ``import lmcache`` resolves its device-ops object
    (which binds the compiled ops as instance attributes when they load) and registers a
    ``lmcache.c_ops`` shim without a __spec__ in sys.modules."""
    pkg = root / "lmcache"
    (pkg / "v1" / "platform").mkdir(parents=True)
    (pkg / "v1" / "__init__.py").write_text("")
    (pkg / "v1" / "platform" / "__init__.py").write_text(
        "class CudaDeviceOps:\n"
        "    def multi_layer_kv_transfer(self, *a):\n        return 'torch'\n"
        "_OPS = CudaDeviceOps()\n"
        f"if {native!r}:\n    _OPS.multi_layer_kv_transfer = len\n"
        "def resolve_device_ops(device_type):\n    return _OPS\n")
    (pkg / "__init__.py").write_text(
        "import sys, types\n__version__ = '0.5.3'\n"
        f"torch_device_type = {device!r}\n"
        "from lmcache.v1.platform import resolve_device_ops\n"
        "sys.modules['lmcache.c_ops'] = types.ModuleType('lmcache.c_ops')\n")
    return {"PYTHONPATH": str(root)}


@pytest.mark.parametrize("native,want", [(True, "loaded"), (False, "fallback")])
def test_probe_kernels_reads_lmcache_device_ops(tmp_path, native, want):
    """0.5.3's ``lmcache.c_ops`` is a shim without __spec__: the probe asks the device-ops
    object whether the compiled ops were bound (the H200 campaign recorded 'unknown')."""
    got = logs.probe_kernels(_fake_lmcache(tmp_path, native))
    assert got["lmcache"] == "0.5.3" and got["kernels"] == want
    assert got["native_ops_bound"] == (1 if native else 0)


def test_probe_kernels_on_a_cpu_device_is_unknown(tmp_path):
    got = logs.probe_kernels(_fake_lmcache(tmp_path, native=False, device="cpu"))
    assert got["kernels"] == "unknown" and got["device_type"] == "cpu"
