"""The remote experiment without a GPU: Redis started, health-checked, kept across vLLM's
restart and stopped by its process group (a real redis-server, the stand-in vLLM of
tests/fakevllm); the LMCache config of the remote arms; the experiment's phases on stand-in
servers; the config check; remote.csv and its comparison from synthetic records. Redis that
fails to start: tests/test_faults.py."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import socket
from types import SimpleNamespace

import pytest

import faultkit as fk
from kvreuse import aggregate, decision, experiments, remote_store, results
from kvreuse import plan as arm_plan
from kvreuse.config import check, server_config
from kvreuse.errors import ConfigError
from kvreuse.plan import ServerPlan
from kvreuse.server import HOST, free_port
from kvreuse.servers import Servers
from kvreuse.tables_remote import COLUMNS

HAS_REDIS = shutil.which("redis-server") is not None
needs_redis = pytest.mark.skipif(not HAS_REDIS, reason="redis-server is not installed (envs/install-cpu.sh "
                                                      "installs it as root: apt-get install redis-server)")
ARMS = {"lmcache_redis": ("redis", "redis"), "lmcache_remote_server": ("lm_server", "lm")}


@pytest.fixture
def marker() -> str:
    return fk.new_marker()


# -- Redis's lifecycle, for real ---------------------------------------------------------------
@needs_redis
def test_redis_starts_first_outlives_a_vllm_restart_and_is_stopped_last(tmp_path, marker):
    spec = remote_store.spec("redis", free_port(), tmp_path / "store")
    assert spec["version"] and spec["url"] == f"redis://{HOST}:{spec['port']}"
    plan = ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)}, remote_store=spec)
    with Servers(plan, model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                 server={"startup_timeout_s": 30, "stop_timeout_s": 10}) as srv:
        srv.start()
        redis_pid = srv.remote_store.proc.pid
        assert remote_store.redis_ping(spec["port"], 1.0) and remote_store.redis_keys(spec["port"]) == 0
        srv.restart()  # vLLM only
        assert srv.remote_store.proc.pid == redis_pid and remote_store.redis_ping(spec["port"], 1.0)
        assert [s["process"] for s in srv.starts] == ["redis", "vllm", "vllm"]
        assert [s["process"] for s in srv.stops] == ["vllm"]
        srv.check()
    assert not remote_store.redis_ping(spec["port"], 0.5)
    fk.assert_none_left(marker)
    # its data folder in the run's store folder, nothing persisted there
    assert (tmp_path / "store/redis").is_dir() and not list((tmp_path / "store/redis").iterdir())
    log = (tmp_path / "logs/redis.log").read_text()
    assert "Ready to accept connections" in log and f"'--bind', '{HOST}'" in log


@needs_redis
def test_redis_is_stopped_when_vllm_fails_to_start(tmp_path, marker):
    spec = remote_store.spec("redis", free_port(), tmp_path / "store")
    plan = ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM),
                                         "FAKE_VLLM": "start_fail"}, remote_store=spec)
    with pytest.raises(remote_store.ServerError, match="vllm failed to start"):
        with Servers(plan, model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                     server={"startup_timeout_s": 30, "stop_timeout_s": 10}) as srv:
            srv.start()
    assert not remote_store.redis_ping(spec["port"], 0.5)
    fk.assert_none_left(marker)


def test_settled_keys_waits_until_the_count_stops_changing(monkeypatch):
    counts = iter([3, 5, 8, 8, 9])
    monkeypatch.setattr(remote_store, "redis_keys", lambda port: next(counts))
    slept = []
    assert remote_store.settled_keys({"kind": "redis", "port": 1}, sleep=slept.append) == 8
    assert slept == [1.0, 1.0, 1.0]
    assert remote_store.settled_keys({"kind": "lm_server", "port": 1}) is None  # cannot be asked


LMCACHE_METRICS = """# HELP lmcache:remote_put_task_num The number of remote put tasks
# TYPE lmcache:remote_put_task_num gauge
lmcache:remote_put_task_num{model_name="m",role="worker",served_model_name="m",worker_id="0"} 4.0
# HELP lmcache:num_hit_tokens_total Total number of tokens hit in lmcache
# TYPE lmcache:num_hit_tokens_total counter
lmcache:num_hit_tokens_total{model_name="m",worker_id="0"} 512.0
"""


def test_settled_puts_waits_for_lmcaches_remote_writes():
    assert remote_store.put_tasks_in(LMCACHE_METRICS) == 4.0
    assert remote_store.put_tasks_in(LMCACHE_METRICS[LMCACHE_METRICS.index("# HELP lmcache:num_hit"):]) is None
    readings = iter([2.0, 2.0, 1.0, 0.0, 1.0, 0.0, 0.0, 5.0])
    slept = []
    assert remote_store.settled_puts(["u"], read=lambda url: next(readings), sleep=slept.append) == 0.0
    assert next(readings) == 5.0 and len(slept) == 5  # two zeros in a row, then it stops reading
    # no gauge anywhere: nothing to wait for; a limit reached: the last reading
    assert remote_store.settled_puts(["a", "b"], read=lambda url: None, sleep=slept.append) is None
    clock = iter(range(0, 1000, 10))
    assert remote_store.settled_puts(["u"], read=lambda url: 3.0, sleep=lambda s: None,
                                     clock=lambda: next(clock), limit_s=30) == 3.0


def test_a_store_lmcache_never_reached_fails_the_run(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text("INFO ... Connected to remote storage\n")
    redis = {"kind": "redis", "port": 6379, "url": "redis://127.0.0.1:6379"}
    lm = {"kind": "lm_server", "port": 7000, "url": "lm://127.0.0.1:7000"}
    remote_store.check_reached(redis, 156, log)
    remote_store.check_reached(lm, None, log)
    remote_store.check_reached(lm, None, tmp_path / "absent.log")
    with pytest.raises(remote_store.ServerError, match="holds no key after the populated prompts"):
        remote_store.check_reached(redis, 0, log)
    with open(log, "a") as f:
        f.write("WARNING ... Failed to initialize/re-establish remote connection: [Errno 111] refused\n")
    with pytest.raises(remote_store.ServerError, match=r"lmcache-remote-server: LMCache did not store .* lm://"):
        remote_store.check_reached(lm, None, log)
    # an earlier run's warning (the log is appended to) does not fail this one
    remote_store.check_reached(lm, None, log, since=remote_store.log_size(log))
    assert remote_store.log_size(tmp_path / "absent.log") == 0


def test_tcp_probe_and_lm_server_command(tmp_path):
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        assert remote_store.tcp_accepts(port, 1.0) and not remote_store.redis_ping(port, 0.2)
    spec = remote_store.spec("lm_server", port, tmp_path)
    # lmcache 0.5.3: v1/server/__main__.py takes HOST PORT [cpu]
    assert spec["argv"][1:] == ["-m", "lmcache.v1.server", HOST, str(port), "cpu"]
    assert (spec["url"], spec["data_dir"], spec["process"]) == (f"lm://{HOST}:{port}", None, "lmcache-remote-server")


# -- the arms' LMCache config -------------------------------------------------------------------
@pytest.mark.parametrize("arm", sorted(ARMS))
def test_remote_arms_point_lmcache_at_the_store_the_run_starts(config, tmp_path, arm):
    kind, scheme = ARMS[arm]
    p = arm_plan.plan(arm, config["arms"][arm], server=server_config(config, "h200"),
                      model=config["models"]["llama-3.1-8b"], run_dir=tmp_path / "logs", has_cuda=True,
                      store_root=tmp_path / "store", run_id="r1")
    port = p.lmcache["ports"]["remote"]
    assert p.remote_store["kind"] == kind and p.remote_store["port"] == port
    assert p.lmcache_config["remote_url"] == f"{scheme}://{HOST}:{port}" == p.lmcache["remote_url"]
    assert p.lmcache_config["remote_serde"] == "naive" and p.lmcache_config["local_cpu"] is True
    assert p.lmcache_server is None  # in process: no LMCache MP server
    if kind == "redis":
        data = str((tmp_path / "store" / arm / "r1" / "redis").absolute())
        assert p.remote_store["data_dir"] == data and data in p.lmcache["store_paths"]
        assert p.remote_store["argv"][p.remote_store["argv"].index("--dir") + 1] == data
    (tmp_path / "kvreuse-model.json").write_text(json.dumps({"name": "llama-3.1-8b"}))
    meta = experiments.base_meta(SimpleNamespace(platform="h200", experiment="remote", arm_name=arm,
                                                 arm=config["arms"][arm], params={}, model_dir=tmp_path,
                                                 model={}, client={}, config_hash=None, repo_dir=tmp_path), p)
    assert meta.server["remote_store"]["url"] == p.remote_store["url"]


def test_not_run_on_the_cpu_and_nothing_started(config, tmp_path):
    arm = "lmcache_redis"
    p = arm_plan.plan(arm, config["arms"][arm], server=server_config(config, "cpu"),
                      model=config["models"]["tiny-llama"], run_dir=tmp_path, has_cuda=False)
    assert p.not_run_reason == "LMCache needs CUDA" and p.remote_store is None


def test_a_process_resident_memory_is_read_from_proc_and_none_when_gone():
    import os
    assert remote_store.rss_bytes(os.getpid()) > 1e6  # this Python
    assert remote_store.rss_bytes(2 ** 22 + 12345) is None  # above Linux's default pid_max: no such process


def test_config_allows_only_remote_arms(config):
    check(config)
    assert config["experiments"]["remote"]["arms"] == ["lmcache_redis", "lmcache_remote_server"]
    bad = copy.deepcopy(config)
    bad["experiments"]["remote"]["arms"] = ["lmcache_cpu"]
    with pytest.raises(ConfigError, match=r"experiments\.remote\.arms: 'lmcache_cpu' has no remote store "
                                          r"\(allowed: arms with lmcache\.store redis or lm_server: "
                                          r"lmcache_redis, lmcache_remote_server\)"):
        check(bad)
    bad = copy.deepcopy(config)
    bad["arms"]["lmcache_redis"]["lmcache"]["mode"] = "server"
    with pytest.raises(ConfigError, match=r"arms\.lmcache_redis\.lmcache\.store: 'redis' is not a server store"):
        check(bad)


# -- the experiment on stand-in servers ----------------------------------------------------------
class StandIns:
    """Servers and recorder in one: books starts, stops and phases."""

    def __init__(self, meta):
        self.meta, self.events, self.sent = meta, [], {}
        self.rss = iter([8e6, 5.3e9])  # the store's memory before populate and before vLLM's stop

    def start(self, name="main", *, connector=True):
        self.events.append("start")

    def stop(self, *names, lmcache_server=False):
        self.events.append("stop")

    def target(self, name="main"):
        return name

    def remote_store_rss_bytes(self):
        self.events.append("store_rss")
        return next(self.rss, None)

    async def phase(self, target, kind, prompts, *, name=None, **fields):
        name = name or results.phase_name(kind)
        self.meta.add_phase(name, results.Phase(kind=kind, n_requests=len(prompts), wall_s=0.0, counters={}, **fields))
        self.events.append(name)
        self.sent[name] = [tuple(p) for p in prompts]
        return [SimpleNamespace(output_token_ids=[1]) for _ in prompts]


def redis_run(config, tmp_path, params):
    """The remote experiment's context for lmcache_redis on the H200's plan, on stand-in servers
    and recorder (one object, StandIns); its meta."""
    arm = "lmcache_redis"
    p = arm_plan.plan(arm, config["arms"][arm], server=server_config(config, "h200"),
                      model=config["models"]["llama-3.1-8b"], run_dir=tmp_path, has_cuda=True,
                      store_root=tmp_path / "store")
    meta = results.RunMeta(status="ok", platform="h200", experiment="remote", arm=arm, arm_config=config["arms"][arm],
                           params=dict(params), accelerator={}, versions={}, model={}, server={}, client={},
                           config_hash=None, git_commit=None, started_at="", finished_at=None, phases={})
    fake = StandIns(meta)
    spec = SimpleNamespace(platform="h200", experiment="remote", arm_name=arm, arm=config["arms"][arm], params=params,
                           log_dir=tmp_path)
    ctx = experiments.Context(spec, p, fake, fake, None, SimpleNamespace(tokens=lambda name, n: [hash(name) % 1000] * n))
    return ctx, meta, fake


def test_populate_restart_vllm_then_hit_and_miss_interleaved(config, tmp_path, monkeypatch):
    params = {"prefix_tokens": 512, "suffix_tokens": 16, "n_cold": 2, "warmup_requests": 1}
    ctx, meta, fake = redis_run(config, tmp_path, params)
    monkeypatch.setattr(remote_store, "redis_keys", lambda port: 7)
    monkeypatch.setattr(remote_store.time, "sleep", lambda s: None)
    in_flight = iter([3.0, 1.0, 0.0, 0.0])  # LMCache's remote writes still running, then none
    monkeypatch.setattr(remote_store, "put_tasks", lambda url: next(in_flight, 0.0))
    asyncio.run(experiments.remote(ctx, params))
    assert fake.events == ["start", "warmup", "store_rss", "populate_0", "populate_1", "store_rss", "stop", "start",
                           "warmup_post_restart", "remote_hit_0", "remote_miss_0", "remote_hit_1", "remote_miss_1"]
    for i in range(2):
        hit, miss = meta.phases[f"remote_hit_{i}"], meta.phases[f"remote_miss_{i}"]
        assert (hit.prefix_tokens, hit.repeat, hit.after_restart) == (512, i, True) == (miss.prefix_tokens, miss.repeat,
                                                                                        miss.after_restart)
        assert fake.sent[f"remote_hit_{i}"] == fake.sent[f"populate_{i}"] and len(fake.sent[f"populate_{i}"][0]) == 528
        never = [n for n, ps in fake.sent.items() if fake.sent[f"remote_miss_{i}"][0] in ps]
        assert never == [f"remote_miss_{i}"] and len(fake.sent[f"remote_miss_{i}"][0]) == 528
    waits = meta.store_after_stop.pop("settle_wait_s")
    assert list(waits) == ["remote_hit_0", "remote_miss_0", "remote_hit_1", "remote_miss_1"]  # before each
    assert meta.store_after_stop == {"remote_store": "redis", "put_tasks_before_stop": 0.0, "keys_before_stop": 7,
                                     "keys_after_stop": 7, "store_rss_bytes_before_populate": 8e6,
                                     "store_rss_bytes_before_stop": 5.3e9, "lookup_timeouts_after_restart": None}
    assert next(in_flight, "drained") == "drained"  # the stop came after LMCache's writes had landed
    assert meta.params["n_cold"] == 2


def test_each_measured_request_after_the_restart_waits_for_lmcaches_remote_writes(config, tmp_path, monkeypatch):
    """Lease 5: LMCache's lm:// lookups queue behind its puts on one socket; a hit sent while the
    previous miss's 2.4 GB were still going out timed out and was served as a miss."""
    params = {"prefix_tokens": 64, "suffix_tokens": 8, "n_cold": 2, "warmup_requests": 0}
    ctx, meta, fake = redis_run(config, tmp_path, params)
    monkeypatch.setattr(remote_store, "redis_keys", lambda port: 3)
    monkeypatch.setattr(remote_store.time, "sleep", lambda s: None)
    in_flight = {"n": 0.0}

    def put_tasks(url):  # each phase leaves one write in flight; a reading drains it
        fake.events.append(f"puts {in_flight['n']:.0f}")
        n, in_flight["n"] = in_flight["n"], 0.0
        return n

    phase = fake.phase

    async def phase_then_puts(*a, **k):
        out = await phase(*a, **k)
        in_flight["n"] = 1.0
        return out

    monkeypatch.setattr(remote_store, "put_tasks", put_tasks)
    monkeypatch.setattr(fake, "phase", phase_then_puts)
    log = tmp_path / "vllm.log"
    log.write_text("before the restart: Timeout occurred for rank 0\n")
    monkeypatch.setattr(remote_store, "log_size", lambda path: log.stat().st_size)
    asyncio.run(experiments.remote(ctx, params))
    after = fake.events[fake.events.index("stop") + 2:]  # from the restarted vLLM on
    names, last = ("remote_hit_0", "remote_miss_0", "remote_hit_1", "remote_miss_1"), 0
    for n, name in enumerate(names):
        i = after.index(name)
        assert after[i - 2:i] == ["puts 0", "puts 0"], after  # sent once none was in flight, twice read
        if n:  # the previous phase's write was seen in flight and waited for
            assert "puts 1" in after[last:i], after
        last = i
    assert meta.store_after_stop["lookup_timeouts_after_restart"] == 0  # the line before the restart is not counted


def test_lookup_timeouts_are_counted_from_the_restarted_vllms_part_of_its_log(tmp_path):
    log = tmp_path / "vllm.log"
    log.write_text("LMCache ERROR: Timeout occurred for rank 0, recreating all sockets\n")
    since = log.stat().st_size
    with log.open("a") as f:
        f.write("x\nLMCache ERROR: Timeout occurred for rank 0, recreating all sockets\n" * 3)
    assert remote_store.lookup_timeouts(log, since) == 3 and remote_store.lookup_timeouts(log) == 4
    assert remote_store.lookup_timeouts(tmp_path / "absent.log") is None


def test_a_redis_left_empty_by_lmcache_stops_the_run_before_the_restart(config, tmp_path, monkeypatch):
    params = {"prefix_tokens": 64, "suffix_tokens": 8, "n_cold": 1, "warmup_requests": 0}
    ctx, meta, fake = redis_run(config, tmp_path, params)
    monkeypatch.setattr(remote_store, "redis_keys", lambda port: 0)
    monkeypatch.setattr(remote_store, "put_tasks", lambda url: None)
    monkeypatch.setattr(remote_store.time, "sleep", lambda s: None)
    with pytest.raises(remote_store.ServerError, match="holds no key"):
        asyncio.run(experiments.remote(ctx, params))
    assert fake.events == ["start", "store_rss", "populate_0"]  # no restart, no hit against an empty store


def test_an_arm_without_a_remote_store_is_refused(config, tmp_path):
    p = ServerPlan(vllm_args=[], env={})
    spec = SimpleNamespace(arm_name="apc", params={})
    ctx = experiments.Context(spec, p, None, None, None, None)
    with pytest.raises(ConfigError, match="arm 'apc' has no remote store"):
        asyncio.run(experiments.remote(ctx, {"prefix_tokens": 8, "suffix_tokens": 1}))


# -- remote.csv from synthetic records -----------------------------------------------------------
LM = {"lmcache": {"mode": "in_process", "store": "redis", "chunk_size": 256}}


def synthetic_run(tmp_path, hits=(1024.0, 768.0, 1024.0)) -> str:
    phases, recs = {}, []
    m = results.RunMeta(status="ok", platform="h200", experiment="remote", arm="lmcache_redis", arm_config=LM,
                        params={}, accelerator={"kind": "gpu"}, versions={}, model={},
                        server={"vllm_args": [], "remote_store": {"kind": "redis", "version": "7.0.15"}}, client={},
                        config_hash=None, git_commit=None, started_at="", finished_at=None, phases=phases,
                        lmcache={"cuda_kernels": "loaded"})

    def add(name, kind, ttft, counters=None, **f):
        phases[name] = results.Phase(kind=kind, n_requests=1, wall_s=0, counters=counters or {},
                                     after_restart=kind != "populate", **f)
        recs.append(results.RequestRecord(platform=m.platform, experiment=m.experiment, arm=m.arm, phase=name,
                                          phase_kind=kind, seq=0, prompt_tokens=1040, cached_tokens=None,
                                          output_tokens=1, ttft_ms=ttft, itl_ms=[], e2e_ms=ttft + 100, error=None,
                                          output_token_ids=[1], **f))

    for i, h in enumerate(hits):
        f = {"prefix_tokens": 1024, "repeat": i}
        add(f"populate_{i}", "populate", 100.0, **f)
        add(f"remote_hit_{i}", "remote_hit", 30.0 + 10 * i, {"vllm:external_prefix_cache_hits": h}, **f)
        add(f"remote_miss_{i}", "remote_miss", 90.0 + 10 * i, **f)
    out = tmp_path / "h200" / "remote" / "lmcache_redis.jsonl"
    results.write_records(out, recs)
    results.write_meta(results.meta_path(out), m)
    return str(out)


def test_table_hit_against_miss_with_ci_counters_and_store_version(tmp_path):
    t = aggregate.build("remote", [synthetic_run(tmp_path)], 0.05)
    assert list(t.columns) == COLUMNS and len(t) == 1
    r = t.iloc[0]
    assert (r.store, r.store_version, r.prefix_tokens, r.n_hit, r.n_miss) == ("redis", "7.0.15", 1024, 3, 3)
    assert r.hit_ttft_median_ms == 40.0 and r.miss_ttft_median_ms == 100.0
    assert r.diff_median_ms == 60.0 and r.diff_ci95_lo_ms == r.diff_ci95_hi_ms == 60.0  # paired: each pair saves 60
    assert r.speedup == 2.5
    assert (r.hit_tokens, r.reusable_tokens, r.hit_fraction, r.hit_fraction_min, r.miss_hit_tokens) == (
        2816.0, 1024, 1.0, 0.75, 0.0)
    assert r.persistence == "partial"  # one populated prompt got 0.75 of its reusable tokens
    c = aggregate.build("comparisons", [synthetic_run(tmp_path)], 0.05)
    row = c[c.experiment == "remote"].iloc[0]
    assert (row.baseline, row.treatment, row.diff_median_ms) == ("remote_miss", "remote_hit", 60.0)


def test_what_lmcache_stored_stands_beside_what_the_store_received():
    from types import SimpleNamespace as NS
    from kvreuse import tables_remote

    log = {"stores": 3, "store_bytes": 2.62e9, "store_ms": 90.0}
    phases = {f"populate_{i}": results.Phase(kind="populate", n_requests=1, wall_s=1.0, counters={}, lmcache_log=log)
              for i in range(5)}
    held = {"store_rss_bytes_before_populate": 8e6, "store_rss_bytes_before_stop": 8e6 + 2e7,
            "lookup_timeouts_after_restart": 5}
    got = tables_remote._stored(NS(phases=phases, store_after_stop=held))
    assert got["stored_gb"] == pytest.approx(13.1) and got["store_grew_gb"] == pytest.approx(0.02)
    assert got["lookup_timeouts"] == 5
    # a run made before the store's memory was recorded (lease 5): LMCache's side only
    got = tables_remote._stored(NS(phases=phases, store_after_stop={"keys_before_stop": None}))
    assert got["stored_gb"] == pytest.approx(13.1) and got["store_grew_gb"] != got["store_grew_gb"]
    assert got["lookup_timeouts"] != got["lookup_timeouts"]


def test_a_store_that_served_no_hits_after_the_restart_is_not_persisted_whatever_the_times(tmp_path):
    """Lease 5's LMCache remote server: the populated prompts got 0 external hits after vLLM's
    restart; the times differ, but no reuse was measured, and the table says so."""
    t = aggregate.build("remote", [synthetic_run(tmp_path, hits=(0.0, 0.0, 0.0))], 0.05)
    r = t.iloc[0]
    assert (r.hit_fraction, r.hit_fraction_min, r.persistence) == (0.0, 0.0, "not persisted")
    row = decision.remote_rows({"remote": t})[0]
    assert row["persistence"] == "not persisted" and row["hit_fraction"] == 0.0


def test_registered_with_its_runs_table_and_slurm_minutes(config):
    from kvreuse import dag
    from kvreuse import config as kc

    assert "remote" in kc.EXPERIMENTS and "remote" in experiments.EXPERIMENTS
    assert "results/tables/remote.csv" in dag.all_targets(config)
    gpu = {**config, "run_platforms": ["h200"]}
    assert dag.run_targets(gpu, "remote") == ["results/raw/h200/remote/lmcache_redis.jsonl",
                                              "results/raw/h200/remote/lmcache_remote_server.jsonl"]
    h200 = kc.experiment_params(config, "h200", "remote")
    assert (h200["prefix_tokens"] + h200["suffix_tokens"], h200["n_cold"]) == (20000, 5)


def test_the_remote_table_says_what_each_hit_loaded_and_at_what_rate_by_lmcaches_log():
    from kvreuse import tables_remote

    meta = results.RunMeta(status="ok", platform="h200", experiment="remote", arm="lmcache_redis", arm_config={},
                           params={}, accelerator={}, versions={}, model={}, server={}, client={},
                           config_hash=None, git_commit=None, started_at="", finished_at=None, phases={})
    log = {"retrieves": 1, "retrieve_bytes": 2.5e9, "retrieve_ms": 5000.0, "retrieved_tokens": 19968,
           "required_tokens": 19968, "stores": 0, "store_bytes": 0, "store_ms": 0.0, "stored_tokens": 0}
    for i in range(2):
        meta.add_phase(f"remote_hit_{i}", results.Phase(kind="remote_hit", n_requests=1, wall_s=5.0, counters={},
                                                       lmcache_log=dict(log), repeat=i))
        meta.add_phase(f"remote_miss_{i}", results.Phase(kind="remote_miss", n_requests=1, wall_s=1.0, counters={},
                                                        repeat=i))
    loads = tables_remote._loads(meta)
    assert loads == {"loaded_gb_per_hit": 2.5, "load_gb_s": 0.5, "load_source": loads["load_source"]}
    assert "lmcache" in loads["load_source"]
    meta.phases = {}
    assert tables_remote._loads(meta)["load_source"] == ""


def test_the_remote_table_gives_the_median_waits_for_lmcaches_writes_before_hits_and_misses():
    from types import SimpleNamespace as NS
    from kvreuse import tables_remote

    phases = {f"{kind}_{i}": results.Phase(kind=kind, n_requests=1, wall_s=1.0, counters={})
              for kind in ("remote_hit", "remote_miss") for i in range(3)}
    waits = {"remote_hit_0": 2.8, "remote_hit_1": 2.2, "remote_hit_2": 2.9,
             "remote_miss_0": 0.6, "remote_miss_1": 0.7, "remote_miss_2": 0.65}
    got = tables_remote._stored(NS(phases=phases, store_after_stop={"settle_wait_s": waits}))
    assert got["settle_hit_median_s"] == pytest.approx(2.8) and got["settle_miss_median_s"] == pytest.approx(0.65)
    # a run made before the run waited (lease 5) has no waits: the columns are empty, not zero
    got = tables_remote._stored(NS(phases=phases, store_after_stop={}))
    assert got["settle_hit_median_s"] != got["settle_hit_median_s"]
