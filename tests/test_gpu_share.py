"""Jobs sharing one GPU (kvreuse.gpu_share): the node-wide measurement lock keeps their
measurements apart, a job holds it from its first ready server to its last stop, and each job
asks the profile for its share of the node."""

import math
import subprocess
import sys
import time

import pytest
import yaml

import faultkit as fk
from kvreuse import config as kc
from kvreuse import dag, gpu_share
from kvreuse.errors import ConfigError
from kvreuse.gpu_share import LOCK_ENV, MeasureLock
from kvreuse.plan import ServerPlan
from kvreuse.servers import Servers

HOLDER = """
import sys, time
from kvreuse.gpu_share import MeasureLock
lock = MeasureLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def test_without_the_runners_lock_it_does_nothing(monkeypatch):
    monkeypatch.delenv(LOCK_ENV, raising=False)
    lock = MeasureLock()
    lock.acquire()
    assert not lock.held and lock.as_meta() is None


def test_a_second_job_waits_until_the_first_has_released(tmp_path):
    path = tmp_path / "measure.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "1.5"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = MeasureLock(path)
        t0 = time.monotonic()
        lock.acquire()
        waited = time.monotonic() - t0
        assert lock.held and waited > 0.5
        lock.release()
        meta = lock.as_meta()
        assert meta["lock"] == str(path) and len(meta["holds"]) == 1
        assert meta["holds"][0]["waited_s"] > 0.5 and meta["holds"][0]["held_s"] is not None
    finally:
        holder.wait(timeout=10)


def test_a_job_holds_the_lock_from_its_first_ready_server_to_its_last_stop(tmp_path):
    marker = fk.new_marker()
    plan = ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)})
    lock = MeasureLock(tmp_path / "measure.lock")
    srv = Servers(plan, model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                  server={"startup_timeout_s": 30, "stop_timeout_s": 10}, lock=lock)
    with srv:
        assert not lock.held  # starting: another job may measure meanwhile
        srv.start("a")
        assert lock.held
        srv.start("b")
        srv.stop("a")
        assert lock.held  # b still serves
        srv.stop("b")
        assert not lock.held  # stopped: another job may measure while this one restarts
        srv.start("a")
        assert lock.held
    assert not lock.held  # leaving the block stops a and lets go
    assert [h["held_s"] is not None for h in lock.as_meta()["holds"]] == [True, True]
    fk.assert_none_left(marker)


def test_a_job_asks_for_its_share_of_the_gpu_and_the_memory_of_its_stores():
    config = yaml.safe_load(open("config.yaml"))
    shared = kc.deep_merge(config, {"platforms": {"h200": {"server": {"jobs_per_gpu": 3}}}})
    res = dag.job_resources(shared, "restart", "h200", ["apc"])
    assert res == {"gpu_pct": 33, "host_mem_gb": gpu_share.VLLM_HOST_MEM_GB, "store_disk_gb": 0}
    # one job per GPU unless the platform says otherwise
    assert dag.job_resources(config, "restart", "h100", ["apc"])["gpu_pct"] == 100
    disk = dag.job_resources(shared, "restart", "h200", ["lmcache_disk"])
    assert disk["host_mem_gb"] == config["arms"]["lmcache_disk"]["lmcache"]["cpu_gb"] + gpu_share.VLLM_HOST_MEM_GB
    assert disk["store_disk_gb"] == config["arms"]["lmcache_disk"]["lmcache"]["disk_gb"]


def test_a_remote_store_job_counts_the_remote_stores_memory():
    """Redis and LMCache's remote server keep every prompt the remote experiment sends (warm-ups
    after both starts, populates, misses) in host memory: the job asks for it, so the two remote
    arms' jobs cannot hold a host of 119 GiB at once."""
    config = yaml.safe_load(open("config.yaml"))
    params = kc.experiment_params(config, "h200", "remote")
    n = 2 * params["warmup_requests"] + 2 * params["n_cold"]
    kv_gib = n * (params["prefix_tokens"] + params["suffix_tokens"]) * 128 * 1024 / 1024 ** 3
    for arm in ("lmcache_redis", "lmcache_remote_server"):
        res = dag.job_resources(config, "remote", "h200", [arm])
        assert res["host_mem_gb"] == math.ceil(config["arms"][arm]["lmcache"]["cpu_gb"] + kv_gib
                                               + gpu_share.VLLM_HOST_MEM_GB), (arm, res)
    assert 2 * res["host_mem_gb"] > 119


def test_sharing_a_gpu_needs_a_fixed_kv_cache():
    config = yaml.safe_load(open("config.yaml"))
    bad = kc.deep_merge(config, {"platforms": {"h100": {"server": {
        "jobs_per_gpu": 2, "extra_args": ["--gpu-memory-utilization", "0.85"]}}}})
    with pytest.raises(ConfigError, match=r"platforms.h100.server.jobs_per_gpu: 2 jobs on one GPU need a fixed KV "
                                          r"cache.*--kv-cache-memory-bytes"):
        kc.check(bad)
