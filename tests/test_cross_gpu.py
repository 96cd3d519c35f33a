"""Reuse across GPUs without a GPU (issue 14, item 3): cross_instance with ``instance_devices``
on h200x2 (A on GPU 0, B on GPU 1, the 8B at tensor_parallel 1, one LMCache server that sees
both). The config and its checks, the run's model and tensor parallelism, the environment each
instance gets (CUDA_VISIBLE_DEVICES, on stand-in processes), the runner's GPU-count check, the
meta's starts, the table's GPU columns, and not run without CUDA."""

from __future__ import annotations

import asyncio
import copy
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import faultkit as fk
from kvreuse import aggregate, dag, experiments, platforms, results
from kvreuse import config as kc
from kvreuse.errors import ConfigError
from kvreuse.plan import ServerPlan
from kvreuse.server import HOST, ServerError, free_port
from kvreuse.servers import Servers
from kvreuse.tables_cross_instance import instance_gpus

REPO = Path(__file__).resolve().parents[1]
PAIR = {"a": [0], "b": [1]}


@pytest.fixture
def cfg(config):
    return copy.deepcopy(config)


def with_devices(cfg: dict, platform: str, devices, **more) -> dict:
    """``cfg`` with the platform's cross_instance overrides replaced by these."""
    out = copy.deepcopy(cfg)
    out["platforms"][platform].setdefault("experiments", {})["cross_instance"] = {
        **out["platforms"][platform]["experiments"].get("cross_instance", {}), "instance_devices": devices, **more}
    return out


# -- config --------------------------------------------------------------------------------------
def test_h200x2_runs_cross_instance_with_the_8b_one_gpu_per_instance(cfg):
    kc.check(cfg)
    assert "cross_instance" in cfg["platforms"]["h200x2"]["run_experiments"]
    run = dag.run_params(cfg, "cross_instance", "h200x2", "lmcache_mp")
    assert run["model_name"] == "llama-3.1-8b" and run["model"] == cfg["models"]["llama-3.1-8b"]
    assert run["server"]["tensor_parallel"] == 1 and run["params"]["instance_devices"] == PAIR
    assert dag.model_dir(cfg, "h200x2", "cross_instance") == "resources/models/llama-3.1-8b"
    # the platform's other runs keep its 70B at tensor_parallel 2; other platforms are as before
    restart = dag.run_params(cfg, "restart", "h200x2", "lmcache_mp")
    assert (restart["model_name"], restart["server"]["tensor_parallel"]) == ("llama-3.1-70b", 2)
    assert dag.model_dir(cfg, "h200x2") == "resources/models/llama-3.1-70b"
    h200 = dag.run_params(cfg, "cross_instance", "h200", "lmcache_mp")
    assert h200["model_name"] == "llama-3.1-8b" and "instance_devices" not in h200["params"]
    assert kc.instance_devices(h200["params"], "cross_instance") is None
    assert kc.instance_devices(restart["params"], "restart") is None  # a key of cross_instance only
    # the job takes the node; host memory for two vLLM workers (one GPU each) and the L1
    res = dag.job_resources(cfg, "cross_instance", "h200x2", ["lmcache_mp"])
    assert res["gpu_pct"] == 100 and res["host_mem_gb"] == 52 + 2 * 10


def test_the_config_refuses_instance_devices_a_job_cannot_give(cfg):
    def refused(c, match):
        with pytest.raises(ConfigError, match=match):
            kc.check(c)

    refused(with_devices(cfg, "h200", PAIR),
            r"experiments.cross_instance on platform h200: instance_devices.b \[1\] names a GPU that a job "
            r"of platform h200 does not get \(1 GPU: allowed indices \[0\]; platforms with more GPUs: "
            r"h200x2, h200x4, h200x8\)")
    refused(with_devices(cfg, "h200x2", {"a": [0], "b": [0, 1]}),
            r"instance_devices .* gives the instances different numbers of GPUs \(\{'a': 1, 'b': 2\}\).*world size")
    refused(with_devices(cfg, "h200x4", {"a": [0, 1, 2], "b": [1, 2, 3]}, model="llama-3.1-8b"),
            r"h200x4: instance_devices: tensor_parallel 3 does not divide")
    refused(with_devices(cfg, "cpu", {"a": [0], "b": [0]}), r"platform cpu does not get \(0 GPUs: allowed indices none")
    refused(kc.deep_merge(cfg, {"platforms": {"h200x2": {"experiments": {"cross_instance": {"model": "llama-9"}}}}}),
            r"experiments.cross_instance on platform h200x2: model 'llama-9' is not defined under 'models'")
    # both on the one GPU of h200 is today's design, written out
    kc.check(with_devices(cfg, "h200", {"a": [0], "b": [0]}))


def test_the_schema_names_a_malformed_instance_devices(cfg):
    for devices, match in (({"a": [0]}, r"missing key 'b'"), ({"a": [0], "b": [-1]}, r"b\[0\]: -1 is out of range"),
                           ({"a": [0], "b": [1], "c": [2]}, r"unknown key 'c'"), ([[0], [1]], r"matches none")):
        msgs = kc.schema_errors(with_devices(cfg, "h200x2", devices), kc.schema.load())
        assert len(msgs) == 1 and msgs[0].startswith("platforms.h200x2.experiments.cross_instance.instance_devices")
        assert __import__("re").search(match, msgs[0]), msgs


# -- the GPUs each instance gets -------------------------------------------------------------------
def test_an_instances_cuda_visible_devices_names_the_jobs_gpus_it_is_pinned_to():
    assert platforms.instance_cuda_devices([1], job_devices="") == "1"  # no job variable: the node's GPUs
    assert platforms.instance_cuda_devices([0, 1], job_devices="") == "0,1"
    assert platforms.instance_cuda_devices([1], job_devices="4,7") == "7"  # SLURM gave the job GPUs 4 and 7
    assert platforms.instance_cuda_devices([0], job_devices="GPU-aa, GPU-bb") == "GPU-aa"
    with pytest.raises(ValueError, match=r"GPU index 1 of the job's GPUs, but the job has 1 \(CUDA_VISIBLE_DEVICES='3'\)"):
        platforms.instance_cuda_devices([1], job_devices="3")


def test_the_runner_needs_the_gpus_the_instances_are_pinned_to(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert platforms.gpu_count_problem("h200x2", 1, ["NVIDIA H200"] * 2, instance_devices=PAIR) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # the job got one GPU
    problem = platforms.gpu_count_problem("h200x2", 1, ["NVIDIA H200"] * 2, instance_devices=PAIR)
    assert problem.startswith("platform h200x2: the experiment pins its vLLM instances to the job's GPUs "
                              "(a on [0], b on [1]: instance_devices), which needs 2 GPUs, but this job sees 1 GPU")
    assert "Nothing was run" in problem and "CLUSTER.platforms.h200x2.gpus" in problem
    assert platforms.gpu_count_problem("cpu", 1, [], instance_devices=PAIR) is None


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_each_instance_runs_on_its_gpus_and_the_lmcache_server_on_all_of_the_jobs(tmp_path, monkeypatch):
    """Stand-in processes (tests/fakevllm): the job has GPUs 4 and 7 (as SLURM sets them); A gets
    4, B gets 7, the LMCache server both; the starts record each one's GPUs."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    marker, port = fk.new_marker(), free_port()
    plan = ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)},
                      lmcache_server={"argv": [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                                               "--port", str(port)], "health_url": f"http://{HOST}:{port}/health"},
                      lmcache={"metrics_urls": []})
    with Servers(plan, model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                 server={"startup_timeout_s": 30, "stop_timeout_s": 10}) as srv:
        srv.start("a", devices=[0])
        srv.start("b", devices=[1])
        assert environ(srv.vllm["a"].proc.pid)["CUDA_VISIBLE_DEVICES"] == "4"
        assert environ(srv.vllm["b"].proc.pid)["CUDA_VISIBLE_DEVICES"] == "7"
        assert environ(srv.lmcache_server.proc.pid)["CUDA_VISIBLE_DEVICES"] == "4,7"
        assert [(s["process"], s.get("devices"), s.get("cuda_visible_devices")) for s in srv.starts] == [
            ("lmcache-server", None, "4,7"), ("vllm-a", [0], "4"), ("vllm-b", [1], "7")]
        srv.stop("a")
        srv.start("a")  # not pinned: the job's GPUs
        assert environ(srv.vllm["a"].proc.pid)["CUDA_VISIBLE_DEVICES"] == "4,7"
        assert srv.starts[-1]["devices"] is None and srv.starts[-1]["cuda_visible_devices"] == "4,7"
        with pytest.raises(ServerError, match=r"vllm-c cannot be pinned to the job's GPUs \[2\]: GPU index 2"):
            srv.start("c", devices=[2])
        assert "c" not in srv.vllm
    fk.assert_none_left(marker)


# -- the experiment, its meta and its table -------------------------------------------------------
class StandIns:
    def __init__(self):
        self.started = []

    def start(self, name="main", *, connector=True, devices=None):
        self.started.append((name, devices))

    def stop(self, *names, lmcache_server=False):
        pass

    def target(self, name="main"):
        return name


class Recorder:
    def __init__(self, meta):
        self.meta = meta

    async def phase(self, target, kind, prompts, *, name=None, **fields):
        self.meta.add_phase(name or kind, results.Phase(kind=kind, n_requests=len(prompts), wall_s=0.0,
                                                        counters={}, **fields))


def test_the_experiment_starts_a_and_b_on_their_gpus(cfg, tmp_path):
    run = dag.run_params(cfg, "cross_instance", "h200x2", "lmcache_mp")
    params = {**run["params"], "prefix_tokens_list": [1024], "n_cold": 1, "warmup_requests": 0}
    meta = results.RunMeta(status="ok", platform="h200x2", experiment="cross_instance", arm="lmcache_mp",
                           arm_config=run["arm"], params=dict(params), accelerator={}, versions={}, model={},
                           server={}, client={}, config_hash=None, git_commit=None, started_at="",
                           finished_at=None, phases={})
    spec = SimpleNamespace(platform="h200x2", experiment="cross_instance", arm_name="lmcache_mp", arm=run["arm"],
                           params=params, model_dir=tmp_path, server=run["server"], client={"max_tokens": 16})
    srv = StandIns()
    ctx = experiments.Context(spec, SimpleNamespace(lmcache_server={}, lmcache=None), srv, Recorder(meta), None,
                              SimpleNamespace(tokens=lambda name, n: [1] * n))
    asyncio.run(experiments.cross_instance(ctx, params))
    assert srv.started == [("a", [0]), ("b", [1])]
    assert meta.params["instance_devices"] == PAIR


def test_not_run_without_cuda_and_nothing_started(cfg, tmp_path):
    run = dag.run_params(cfg, "cross_instance", "h200x2", "lmcache_mp")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "kvreuse-model.json").write_text(json.dumps({"name": "llama-3.1-8b", "weights": "dummy"}))
    spec = experiments.RunSpec(**run, model_dir=model_dir, out_jsonl=tmp_path / "raw/lmcache_mp.jsonl",
                               log_dir=tmp_path / "logs")
    meta = experiments.run(spec, has_cuda=False)
    written = results.read_meta(results.meta_path(spec.out_jsonl))
    assert (meta["status"], written.reason, written.server_starts) == ("not_run", "LMCache needs CUDA", [])
    assert "--tensor-parallel-size" in written.server["vllm_args"]
    args = written.server["vllm_args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "1"


def meta_with_starts(platform: str, starts: list[dict]) -> results.RunMeta:
    return results.RunMeta(status="ok", platform=platform, experiment="cross_instance", arm="lmcache_mp",
                           arm_config={}, params={}, accelerator={}, versions={}, model={}, server={}, client={},
                           config_hash=None, git_commit=None, started_at="", finished_at=None, phases={},
                           server_starts=starts)


def test_the_table_says_which_gpus_a_and_b_ran_on(tmp_path):
    pinned = [{"process": "lmcache-server"}, {"process": "vllm-a", "devices": [0], "cuda_visible_devices": "0"},
              {"process": "vllm-b", "devices": [1], "cuda_visible_devices": "1"}]
    assert instance_gpus(meta_with_starts("h200x2", pinned)) == {"a": [0], "b": [1]}
    # a run made before starts recorded GPUs, on a one-GPU platform: both on its GPU
    old = [{"process": "vllm-a"}, {"process": "vllm-b"}]
    assert instance_gpus(meta_with_starts("h200", old)) == {"a": [0], "b": [0]}
    assert instance_gpus(meta_with_starts("h200x2", old)) == {"a": [0, 1], "b": [0, 1]}
    # in the table: one row per length, with the GPU columns
    sys.path.insert(0, str(Path(__file__).parent))
    from test_cross_instance import synthetic_run
    raw = synthetic_run(tmp_path)
    m = results.read_meta(results.meta_path(raw))
    m.platform, m.server_starts = "h200x2", pinned
    results.write_meta(results.meta_path(raw), m)
    t = aggregate.build("cross_instance", [raw], 0.05)
    assert (t.gpus_a.tolist(), t.gpus_b.tolist(), t.cross_gpu.tolist()) == (["0"], ["1"], [True])


def test_the_lmcache_preflight_takes_the_hosts_memory_limit_where_meminfo_says_too_little(config, tmp_path,
                                                                                         monkeypatch):
    """The lent hosts with several H200 start with about 31 GiB available and grow to their limit:
    lmcache_mp's 52 GiB L1 would be refused there unless the limit is given
    (profiles/gpu-node/campaign-step.sh exports KVREUSE_HOST_MEM_GB from HOST_MEM_GB)."""
    from kvreuse.errors import PreflightError
    from kvreuse.lmcache import store

    mp = {"lmcache_mp": config["arms"]["lmcache_mp"]}
    runs = [["cross_instance", "lmcache_mp"]]
    monkeypatch.setenv(store.HOST_MEM_ENV, "31")
    with pytest.raises(PreflightError, match=r"31.0 GiB of memory available but an LMCache arm pins 52.0 GiB"):
        store.preflight(tmp_path / "lm", mp, runs, has_cuda=True)
    monkeypatch.setenv(store.HOST_MEM_ENV, "250")
    got = store.preflight(tmp_path / "lm", mp, runs, has_cuda=True)
    assert got["status"] == "ok" and got["checks"]["memory"]["available_bytes"] == 250 << 30
    assert "export KVREUSE_HOST_MEM_GB=$HOST_MEM_GB" in (REPO / "profiles/gpu-node/campaign-step.sh").read_text()
