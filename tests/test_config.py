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
