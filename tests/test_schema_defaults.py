"""Each config key's default is defined once, in the config schema (kvreuse.schema).

The package's source holds no ``.get("<config key>", <literal>)``: a default written there
would be a second definition, free to drift from the schema's. And :func:`kvreuse.schema.default`
returns what the schema says.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from kvreuse import schema
from kvreuse.errors import SchemaError

PACKAGE = Path(__file__).resolve().parents[1] / "workflow" / "kvreuse"
SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"

#: ``(module file, key)``: a ``.get`` with a literal default on data that is not the config,
#: although its key is a config key's name, and why
NOT_CONFIG = {
    ("verdict.py", "prefix_tokens"): "a run's recorded params (its meta): 0 where the meta has none",
    ("servers.py", "env"): "the LMCache server's launch spec (lmcache.flags), not server.env",
}


def config_keys() -> set[str]:
    """The names of the keys of experiments.<exp>, server, client, platforms.<p>, arms.<arm>."""
    root = schema.load()
    sections = [("experiments", e) for e in root["properties"]["experiments"]["properties"]]
    sections += [("server",), ("client",), ("platforms", "*"), ("arms", "*")]
    return {k for path in sections for part in schema.key_schemas(*path) for k in part.get("properties", {})}


def literal_defaults(source: str, filename: str, keys: set[str]) -> list[tuple[int, str, str]]:
    """(line, key, default) of each ``x.get("<key>", <literal>)`` with ``key`` in ``keys``."""
    out = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" and len(node.args) == 2 and not node.keywords):
            continue
        key, value = node.args
        if not (isinstance(key, ast.Constant) and key.value in keys):
            continue
        try:
            ast.literal_eval(value)
        except ValueError:
            continue  # a name or a call (schema.default(...)): not a literal
        out.append((node.lineno, key.value, ast.unparse(value)))
    return out


def test_the_finder_sees_a_literal_default():
    src = 'a = p.get("n_cold", 1)\nb = s.get("env", {})\nc = p.get("n_cold", schema.default("x"))\nd = m.get("other", 1)\n'
    assert literal_defaults(src, "x.py", {"n_cold", "env"}) == [(1, "n_cold", "1"), (2, "env", "{}")]


def test_no_literal_default_of_a_config_key_in_the_package():
    keys = config_keys()
    assert {"warmup_requests", "startup_timeout_s", "temperature", "links_gb_s", "prefix_caching"} <= keys
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, key, value in literal_defaults(path.read_text(), str(path), keys):
            if (path.name, key) not in NOT_CONFIG:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: .get({key!r}, {value})")
    assert not found, ("config keys with a literal default in the code; give the default in "
                       "workflow/schemas/config.schema.yaml and read it with kvreuse.schema.get/default:\n"
                       + "\n".join(found))


def test_the_exceptions_are_still_there():
    """An entry of NOT_CONFIG that no longer matches anything is removed, not kept."""
    keys = config_keys()
    for name, key in NOT_CONFIG:
        (path,) = PACKAGE.rglob(name)
        assert any(k == key for _, k, _ in literal_defaults(path.read_text(), name, keys)), (name, key)


# -- default() --------------------------------------------------------------------------------
def raw() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def test_default_is_the_schemas():
    r = raw()
    exps = r["properties"]["experiments"]["properties"]
    n = 0
    for exp, s in exps.items():
        for key, p in s["properties"].items():
            if "default" in p:
                assert schema.default("experiments", exp, key) == p["default"], (exp, key)
                n += 1
    assert n >= 15
    for key, p in r["properties"]["server"]["properties"].items():
        assert schema.default("server", key) == p["default"]
    assert schema.default("client", "temperature") == r["properties"]["client"]["properties"]["temperature"]["default"]
    assert schema.default("paths", "artifacts") == r["properties"]["paths"]["properties"]["artifacts"]["default"]
    arm = r["definitions"]["lmcache_arm"]["properties"]
    assert schema.default("arms", "any", "lmcache", "chunk_size") == arm["chunk_size"]["default"]


def test_the_defaults_the_code_used_before():
    """The values of the literals the schema replaced: behaviour did not change."""
    d = schema.default
    assert d("server", "startup_timeout_s") == 600 and d("server", "stop_timeout_s") == 30
    assert d("server", "prefix_caching_hash_algo") == "sha256_cbor"
    assert d("server", "extra_args") == [] and d("server", "env") == {}
    assert d("client", "temperature") == 0.0
    for exp in ("baseline", "cold_warm", "restart", "prefix_sweep", "multiturn", "serving", "random_overhead"):
        assert d("experiments", exp, "warmup_requests") == 1
    for exp in ("baseline", "cold_warm", "restart", "prefix_sweep", "multiturn"):
        assert d("experiments", exp, "compat") is False
    for exp in ("cold_warm", "restart", "prefix_sweep"):
        assert d("experiments", exp, "n_cold") == 1
    assert d("experiments", "restart", "cold_reference") == "unseen_prefix"
    assert d("experiments", "prefix_sweep", "min_prefix_tokens") == 128
    assert d("experiments", "prefix_sweep", "post_restart_reload") is True
    assert d("experiments", "serving", "fidelity_requests") == 0
    assert d("experiments", "random_overhead", "server_runs") == 1
    assert d("platforms", "h200", "experiments") == {} and d("platforms", "h200", "links_gb_s") == {}
    assert d("arms", "apc", "prefix_caching") is True and d("arms", "apc", "restart_lmcache_server") is False
    assert d("artifact") == {} and d("artifact", "doi") == ""


def test_the_platforms_server_overrides_have_no_defaults():
    """A validator that writes defaults (snakemake.utils.validate) would fill them into each
    platform's server, which then replaces the top-level server's values."""
    assert not [k for k, p in raw()["definitions"]["server"]["properties"].items() if "default" in p]
    with pytest.raises(SchemaError, match="platforms.h100.server.startup_timeout_s has no default"):
        schema.default("platforms", "h100", "server", "startup_timeout_s")


def test_get_and_the_errors_name_the_key():
    assert schema.get({"n_cold": 3}, "experiments", "restart", "n_cold") == 3
    assert schema.get({}, "experiments", "restart", "n_cold") == 1
    with pytest.raises(SchemaError, match=r"server\.max_model_len has no default"):
        schema.default("server", "max_model_len")
    with pytest.raises(SchemaError, match=r"no key experiments\.baseline\.server_runs"):
        schema.get({}, "experiments", "baseline", "server_runs")


def test_a_default_is_a_copy():
    schema.default("server", "extra_args").append("--x")
    assert schema.default("server", "extra_args") == []
