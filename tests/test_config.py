"""Config validation: the schema and the cross-key checks, also through `snakemake -n`."""

import copy
import subprocess
import sys

import jsonschema
import pytest
import yaml

from kvreuse import config as kc
from kvreuse.errors import ConfigError


@pytest.fixture(scope="module")
def schema(repo):
    return yaml.safe_load((repo / "workflow/schemas/config.schema.yaml").read_text())


def test_default_config_is_valid(config, schema):
    jsonschema.validate(config, schema)
    kc.check(config)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda c: c.update(bogus_key=1), "bogus_key"),
    (lambda c: c["client"].update(max_tokens="sixteen"), "sixteen"),
    (lambda c: c["experiments"]["cold_warm"].update(n_warm=-3), "-3"),
    (lambda c: c.update(run_platforms=["tpu"]), "tpu"),
    (lambda c: c["models"]["tiny-llama"].update(source="ftp"), "ftp"),
])
def test_schema_rejects(config, schema, mutate, fragment):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError) as e:
        jsonschema.validate(bad, schema)
    assert fragment in str(e.value)


def test_unknown_arm_is_named_with_the_allowed_ones(config):
    bad = copy.deepcopy(config)
    bad["experiments"]["cold_warm"]["arms"] = ["apc", "lmcache_nvme"]
    with pytest.raises(ConfigError, match=r"lmcache_nvme.*allowed: \['apc'"):
        kc.check(bad)


def test_prefix_longer_than_context_is_refused(config):
    bad = copy.deepcopy(config)
    bad["experiments"]["cold_warm"]["prefix_tokens"] = 100_000
    with pytest.raises(ConfigError, match="max_model_len"):
        kc.check(bad)


def test_per_platform_overrides_merge(config):
    p = kc.experiment_params(config, "h100", "prefix_sweep")
    assert p["prefix_tokens_list"][-1] == 32768 and p["n_warm"] == config["experiments"]["prefix_sweep"]["n_warm"]
    assert kc.server_config(config, "cpu")["max_model_len"] == 4096
    assert kc.server_config(config, "cpu")["startup_timeout_s"] == config["server"]["startup_timeout_s"]


def test_snakemake_stops_before_any_job_on_a_bad_config(repo, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("client: {max_tokens: -1, request_timeout_s: 10}\n")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad)],
                       cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "max_tokens" in out and "-1" in out


@pytest.mark.parametrize("arm, key, value, fits", [
    # the H200's restart stores 47.3 GiB: 3 prefixes per length from 1K to 32K, and as many
    # never-seen recompute references after the restart (the last H200 campaign's lmcache_mp
    # had 27 GiB at LMCache's default watermark 0.8 and evicted every prefix from 4K up)
    ("lmcache_mp", "cpu_gb", 52, True),
    ("lmcache_mp", "cpu_gb", 32, False),
    ("lmcache_mp", "l1_eviction_watermark", 0.8, False),   # 52 x 0.8 = 41.6 GiB
    ("lmcache_fs", "disk_gb", 27, False),
    ("lmcache_mp_l2", "disk_gb", 27, False),
    ("lmcache_cpu", "cpu_gb", 1, True),      # in process: dies with vLLM, nothing to keep
])
def test_restart_store_must_hold_populated_and_never_seen_prompts(config, arm, key, value, fits):
    cfg = copy.deepcopy(config)
    cfg["arms"][arm]["lmcache"][key] = value
    if fits:
        kc.check(cfg)
        return
    with pytest.raises(ConfigError, match=rf"platform h200: 2 x n_cold .*never-seen.*arms\.{arm}"
                                          rf"\.lmcache\.{key.replace('l1_eviction_watermark', 'cpu_gb')}"):
        kc.check(cfg)


def test_eviction_watermark_is_a_server_setting(config):
    cfg = copy.deepcopy(config)
    cfg["arms"]["lmcache_cpu"]["lmcache"]["l1_eviction_watermark"] = 0.9
    with pytest.raises(ConfigError, match=r"lmcache_cpu\.lmcache\.l1_eviction_watermark: only for mode 'server'"):
        kc.check(cfg)
    cfg = copy.deepcopy(config)
    cfg["arms"]["lmcache_mp"]["lmcache"]["server_args"] = ["--eviction-trigger-watermark", "0.5"]
    with pytest.raises(ConfigError, match="l1_eviction_watermark"):
        kc.check(cfg)
