"""An arm's ``lmcache:`` block: its keys and defaults, and the checks a schema cannot make.

The keys, their defaults and their descriptions are defined once, in the config schema
(workflow/schemas/config.schema.yaml, ``definitions.lmcache_arm``; loaded by kvreuse.schema), read
here once at import.
What depends on another key (the stores and hashes of each mode, ``disk_gb`` for a file store)
is checked by :func:`check_arm`.
"""

from __future__ import annotations

import copy
import datetime as dt
import os

from .. import schema
from ..errors import ConfigError


def arm_schema() -> dict:
    """The schema of an arm's ``lmcache:`` block (``definitions.lmcache_arm``)."""
    return schema.load()["definitions"]["lmcache_arm"]


_PROPERTIES = arm_schema()["properties"]
#: the keys of an arm's ``lmcache:`` block, in the schema's order
ARM_KEYS = tuple(_PROPERTIES)
#: the schema's defaults (``hash_algorithm``'s depends on the mode: :func:`settings`)
DEFAULTS = {k: p["default"] for k, p in _PROPERTIES.items() if "default" in p}
MODES = tuple(_PROPERTIES["mode"]["enum"])
#: stores that are a server of their own, which the run starts and LMCache reaches by its
#: ``remote_url`` (kvreuse.remote_store): Redis and LMCache's remote server
REMOTE_STORES = ("redis", "lm_server")
STORES = {"in_process": ("cpu", "local_disk", "fs", *REMOTE_STORES), "server": ("cpu", "fs")}
#: stores whose data lies in files (listed after a stop; need disk space)
FILE_STORES = ("local_disk", "fs")
#: in-process: names vllm.utils.hashing.get_hash_fn_by_name knows (vLLM 0.26.0)
IN_PROCESS_HASHES = ("sha256_cbor", "sha256", "xxhash", "xxhash_cbor")
#: server: --hash-algorithm choices (lmcache: v1/multiprocess/config.py)
SERVER_HASHES = ("blake3", "sha256_cbor", "builtin")
#: vLLM's KV block size on CUDA; LMCache chunks must be whole blocks (the MP connector checks it)
VLLM_BLOCK_SIZE = 16
#: the LMCache config keys written by flags.in_process_config (all in lmcache: v1/config.py)
MANAGED_KEYS = ("chunk_size", "local_cpu", "max_local_cpu_size", "pre_caching_hash_algorithm",
                "save_unfull_chunk", "local_disk", "max_local_disk_size", "remote_storage_plugins",
                "remote_url", "remote_serde", "extra_config", "internal_api_server_enabled",
                "internal_api_server_host", "internal_api_server_port_start",
                "internal_api_server_include_index_list")


def settings(cfg: dict) -> dict:
    """The arm's ``lmcache:`` block with defaults filled in."""
    out = copy.deepcopy(DEFAULTS)
    # the hash default depends on the mode, which a JSON-schema default cannot express: in
    # process, LMCache must hash like vLLM (sha256_cbor, see the package docstring); the
    # LMCache server's own default is blake3
    out["hash_algorithm"] = "sha256_cbor" if cfg.get("mode") == "in_process" else "blake3"
    out.update(cfg)
    return out


def check_arm(name: str, cfg: dict) -> None:
    """Cross-key checks of one arm's ``lmcache:`` block; raises ConfigError naming the key."""
    key = f"arms.{name}.lmcache"
    unknown = sorted(set(cfg) - set(ARM_KEYS))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (allowed: {', '.join(ARM_KEYS)})")
    mode = cfg.get("mode")
    if mode not in MODES:
        raise ConfigError(f"{key}.mode: {mode!r} is not a mode (allowed: {', '.join(MODES)})")
    s = settings(cfg)
    if s["store"] not in STORES[mode]:
        raise ConfigError(f"{key}.store: {s['store']!r} is not a {mode} store "
                          f"(allowed: {', '.join(STORES[mode])})")
    cs = s["chunk_size"]
    if not isinstance(cs, int) or isinstance(cs, bool) or cs <= 0 or cs % VLLM_BLOCK_SIZE:
        raise ConfigError(f"{key}.chunk_size: {cs!r} must be a positive multiple of "
                          f"{VLLM_BLOCK_SIZE} (vLLM's block size)")
    for k in ("cpu_gb", "disk_gb"):
        v = s.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise ConfigError(f"{key}.{k}: {v!r} must be a number of GiB > 0")
    if s["store"] in FILE_STORES and s.get("disk_gb") is None:
        raise ConfigError(f"{key}.disk_gb: required for store {s['store']!r} (GiB of disk the "
                          f"store may use; the preflight checks it is free)")
    hashes = IN_PROCESS_HASHES if mode == "in_process" else SERVER_HASHES
    if s["hash_algorithm"] not in hashes:
        raise ConfigError(f"{key}.hash_algorithm: {s['hash_algorithm']!r} is not a {mode} hash "
                          f"(allowed: {', '.join(hashes)})")
    if mode == "in_process" and "l1_eviction_watermark" in cfg:
        raise ConfigError(f"{key}.l1_eviction_watermark: only for mode 'server' (the LMCache "
                          f"server's L1; in process, LMCache evicts when its CPU buffer is full)")
    if mode == "in_process" and s["server_args"]:
        raise ConfigError(f"{key}.server_args: only for mode 'server' (allowed here: "
                          f"config_overrides)")
    if mode == "server" and s["config_overrides"]:
        raise ConfigError(f"{key}.config_overrides: only for mode 'in_process' (allowed here: "
                          f"server_args)")
    clash = sorted(set(s["config_overrides"]) & set(MANAGED_KEYS))
    if clash:
        raise ConfigError(f"{key}.config_overrides.{clash[0]}: set by the pipeline from the arm's "
                          f"own keys (allowed: any LMCache key except {', '.join(MANAGED_KEYS)})")


def new_run_id() -> str:
    """A fresh store subfolder name per run, so that a rerun starts truly cold."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
