"""Models that need several GPUs: the 70B model, tensor parallelism per platform (h200x2, x4,
x8), its vLLM flag, the config checks, the KV bytes per GPU, a job's resources and the runner's
GPU count check. No GPU here: the runner's check runs against a stand-in nvidia-smi."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kvreuse import config as kc
from kvreuse import dag, gpu_share, kvmodel, plan, platforms
from kvreuse.errors import ConfigError

MULTI = {"h200x2": 2, "h200x4": 4, "h200x8": 8}


@pytest.fixture()
def cfg() -> dict:
    return yaml.safe_load(Path("config.yaml").read_text())


def test_the_70b_architecture_and_its_kv_bytes_per_gpu():
    arch = json.loads(Path("workflow/resources/llama-3.1-70b/config.json").read_text())
    assert (arch["num_hidden_layers"], arch["hidden_size"], arch["num_attention_heads"],
            arch["num_key_value_heads"], arch["head_dim"], arch["intermediate_size"],
            arch["vocab_size"]) == (80, 8192, 64, 8, 128, 28672, 128256)
    assert arch["rope_theta"] == 500000.0 and arch["rope_scaling"]["rope_type"] == "llama3"
    total = kvmodel.kv_bytes_per_token(arch)
    assert total == 80 * 2 * 8 * 128 * 2  # 320 KiB
    assert [kvmodel.kv_bytes_per_token_per_gpu(arch, tp) for tp in (1, 2, 4, 8)] == [
        total, total // 2, total // 4, total // 8]
    # more ranks than KV heads: each rank holds one (replicated) head
    assert kvmodel.kv_bytes_per_token_per_gpu(arch, 16) == total // 8
    with pytest.raises(ValueError, match="does not divide the model's 8 KV heads"):
        kvmodel.kv_heads_per_gpu(arch, 3)


def test_the_multi_gpu_platforms_in_the_one_list_and_the_config(cfg):
    for name, n in MULTI.items():
        assert platforms.BY_NAME[name].gpu == "H200" and platforms.gpus(name) == n
        assert kc.tensor_parallel(cfg, name) == n
        assert kc.model_name(cfg, name) == "llama-3.1-70b"
        # measured on a lent host (profiles/gpu-node), never by the default pipeline; reported
        # once its results are committed (h200x2), and not before (h200x4, h200x8: not lent yet)
        assert name not in cfg["run_platforms"]
        assert (name in cfg["report_platforms"]) == Path("results/raw", name).is_dir(), name
    assert platforms.gpus("h200") == 1 and platforms.gpus("cpu") == 0
    assert kc.tensor_parallel(cfg, "h200") == 1  # the same code at TP 1: the one-GPU H200


def test_a_fixed_kv_cache_per_gpu_holds_the_same_tokens_at_every_tp(cfg):
    arch = json.loads(Path("workflow/resources/llama-3.1-70b/config.json").read_text())
    tokens = set()
    for name, n in MULTI.items():
        args = kc.server_config(cfg, name)["extra_args"]
        kv_bytes = int(args[args.index("--kv-cache-memory-bytes") + 1])
        tokens.add(kv_bytes // kvmodel.kv_bytes_per_token_per_gpu(arch, n))
    assert len(tokens) == 1 and tokens.pop() >= 2 * kc.server_config(cfg, "h200x2")["max_model_len"]


def test_vllm_gets_the_platforms_tensor_parallel_size(cfg, tmp_path):
    for name, n in (("h200", 1), *MULTI.items()):
        p = plan.plan("lmcache_fs", cfg["arms"]["lmcache_fs"], server=kc.server_config(cfg, name),
                      model=cfg["models"][kc.model_name(cfg, name)], run_dir=tmp_path, has_cuda=False)
        args = p.vllm_args
        assert args.count("--tensor-parallel-size") == 1
        assert args[args.index("--tensor-parallel-size") + 1] == str(n)
    assert "--load-format" in args  # dummy weights from the real config


def test_only_the_experiments_a_platform_names_are_run(cfg):
    runs = {e for e in dag.experiments(cfg) if kc.arms_for(cfg, e, "h200x4")}
    assert runs == set(cfg["platforms"]["h200x4"]["run_experiments"])
    assert kc.arms_for(cfg, "restart", "h200x4") == ["lmcache_fs", "lmcache_mp", "lmcache_mp_l2",
                                                     "vllm_offload_fs"]
    assert kc.arms_for(cfg, "serving", "h200x4") == [] and kc.arms_for(cfg, "serving", "h200") == ["apc"]
    cfg["run_platforms"] = ["h200x4"]
    assert dag.run_targets(cfg, "serving") == []
    cfg["experiments"] = {e: cfg["experiments"][e] for e in ("cold_warm", "restart")}  # a smaller study
    kc.check(cfg)
    assert [e for e in dag.experiments(cfg) if kc.arms_for(cfg, e, "h200x4")] == ["cold_warm", "restart"]
    assert dag.run_targets(cfg, "restart")[0] == "results/raw/h200x4/restart/lmcache_fs.jsonl"


def test_the_config_refuses_what_tensor_parallelism_cannot_do(cfg):
    def refused(over: dict, match: str):
        with pytest.raises(ConfigError, match=match):
            kc.check(kc.deep_merge(cfg, over))

    refused({"platforms": {"h200": {"server": {"extra_args": ["--tensor-parallel-size", "2"]}}}},
            r"platforms.h200.server.extra_args: '--tensor-parallel-size' is set by kvreuse .*tensor_parallel")
    refused({"server": {"extra_args": ["-tp=2"]}}, r"server.extra_args: '-tp=2' is set by kvreuse")
    refused({"platforms": {"h200": {"server": {"tensor_parallel": 2}}}},
            r"platforms.h200.server.tensor_parallel: 2 GPUs per server, but a job of platform h200 "
            r"gets 1 GPU \(allowed: <= 1; platforms with more GPUs: h200x2, h200x4, h200x8\)")
    refused({"platforms": {"h200x4": {"server": {"jobs_per_gpu": 2}}}},
            r"platforms.h200x4.server.jobs_per_gpu: 2, but a server with tensor_parallel 4 takes its GPUs alone")
    refused({"platforms": {"h200x4": {"server": {"tensor_parallel": 3}}}},
            r"platforms.h200x4.server.tensor_parallel: tensor_parallel 3 does not divide")


def test_a_multi_gpu_job_takes_its_node(cfg):
    res = dag.job_resources(cfg, "restart", "h200x4", ["lmcache_fs"])
    assert res["gpu_pct"] == gpu_share.GPU_PCT
    assert res["host_mem_gb"] == cfg["arms"]["lmcache_fs"]["lmcache"]["cpu_gb"] + 4 * gpu_share.VLLM_HOST_MEM_GB
    assert dag.job_resources(cfg, "restart", "h200", ["apc"])["host_mem_gb"] == gpu_share.VLLM_HOST_MEM_GB


def test_the_runner_needs_as_many_gpus_as_the_tensor_parallel(monkeypatch):
    four = ["NVIDIA H200"] * 4
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert platforms.gpu_count_problem("h200x4", 4, four) is None
    assert platforms.gpu_count_problem("cpu", 1, []) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # SLURM gave the job two of the node's four
    problem = platforms.gpu_count_problem("h200x4", 4, four)
    assert problem.startswith("platform h200x4 serves with tensor_parallel 4 (vLLM "
                              "--tensor-parallel-size 4: one GPU per rank), but this job sees 2 GPUs")
    assert "CUDA_VISIBLE_DEVICES='0,1'" in problem and "Nothing was run" in problem
    assert "CLUSTER.platforms.h200x4.gpus" in problem
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "sees 0 GPUs (nvidia-smi lists none: no nvidia-smi" in platforms.gpu_count_problem(
        "h200x2", 2, [], "no nvidia-smi on PATH")


def test_this_machine_cannot_measure_a_platform_without_all_its_gpus(cfg):
    assert platforms.missing_gpus(["h200"], ["NVIDIA H200"]) == []
    assert platforms.missing_gpus(["h200x2", "h200"], ["NVIDIA H200"]) == [platforms.BY_NAME["h200x2"]]
    assert platforms.missing_gpus(["h200x2"], ["NVIDIA H200", "NVIDIA H200"]) == []
    cfg["run_platforms"] = ["h200x8"]
    problem = dag.gpu_problem(cfg, ["NVIDIA H200"])
    assert "h200x8 needs 8 H200 GPUs (GPUs seen here: NVIDIA H200)" in problem


def test_the_reload_model_loads_each_gpus_share_over_its_own_link(cfg):
    from types import SimpleNamespace

    from kvreuse import tables_reload

    spec = cfg["models"]["llama-3.1-70b"]
    total = kvmodel.model_kv_bytes_per_token(spec)

    def run(args):
        return SimpleNamespace(server={"vllm_args": args}, model={"spec": spec}, lmcache=None)

    one = run(["--enable-prefix-caching", "--tensor-parallel-size", "1"])
    four = run(["--tensor-parallel-size", "4", "--enforce-eager"])
    before = run(["--enable-prefix-caching"])  # runs made before the flag: one GPU
    assert [tables_reload.tensor_parallel(m) for m in (one, four, before)] == [1, 4, 1]
    assert tables_reload.kv_bytes_per_token(four) == total
    assert tables_reload.link_bytes_per_token(one, total) == total
    assert tables_reload.link_bytes_per_token(four, total) == total / 4
    assert tables_reload.link_bytes_per_token(four, None) is None


def test_every_multi_gpu_server_keeps_nvlink_multicast_off(cfg, tmp_path):
    """The lent hosts with several H200 require NVLink multicast off in every program (NCCL,
    PyTorch's symmetric memory, NVSHMEM): each platform with tensor parallelism sets it in the
    environment of the servers it starts, whatever the environment the run was started in."""
    off = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
           "VLLM_ALLREDUCE_USE_SYMM_MEM": "0"}
    multi = [p for p in cfg["platforms"] if platforms.gpus(p) > 1]
    assert multi
    for p in multi:
        env = kc.server_config(cfg, p)["env"]
        assert {k: env.get(k) for k in off} == off, p


def test_an_lmcache_servers_chunk_counts_are_each_ranks_share(cfg):
    """LMCache's MP server counts the chunks each rank loads (h200x2, lease 1: 16 chunks for 2 x
    1,024 hit tokens at TP 2 and chunk 256), each holding that rank's KV heads: a chunk is the
    chunk size x one GPU's bytes per token, so the loads add up to the model's KV, not twice it."""
    from types import SimpleNamespace

    from kvreuse import phase_stats
    from kvreuse.results import Phase

    spec = cfg["models"]["llama-3.1-70b"]
    total = kvmodel.model_kv_bytes_per_token(spec)
    lm = {"chunk_size": 256, "kv_bytes_per_token": total}
    two = SimpleNamespace(server={"vllm_args": ["--tensor-parallel-size", "2"]}, model={"spec": spec}, lmcache=lm)
    one = SimpleNamespace(server={"vllm_args": []}, model={"spec": spec}, lmcache=lm)
    assert phase_stats.lmcache_chunk_bytes(one) == 256 * total
    assert phase_stats.lmcache_chunk_bytes(two) == 256 * total / 2
    counters = {"lmcache_mp_num_chunks_loaded": 16.0,
                "lmcache_mp_l0_l1_load_throughput_GB_per_second_count": 16.0,
                "lmcache_mp_l0_l1_load_throughput_GB_per_second_sum": 16 * 40.0}
    ph = Phase(kind="post_restart_first", n_requests=1, wall_s=1.0, counters=counters, prefix_tokens=1024)
    nbytes, secs, source = phase_stats.transfers([ph], "load", phase_stats.lmcache_chunk_bytes(two))
    assert nbytes == 2 * 1024 * total and source == phase_stats.SOURCE_LMCACHE_SERVER_CHUNKS
    assert secs == pytest.approx(nbytes / 40e9)
