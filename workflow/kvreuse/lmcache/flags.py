"""What vLLM gets for an LMCache arm: the connector flag, the LMCache YAML and environment.

:func:`apply` fills a server plan (kvreuse.plan.ServerPlan, taken duck-typed: this module does
not import kvreuse.plan); :func:`apc_only` takes the connector off again.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .. import remote_store
from ..server import HOST, free_port
from .command import server_argv
from .settings import REMOTE_STORES, new_run_id, settings

CONFIG_FILE_ENV = "LMCACHE_CONFIG_FILE"
#: LMCache's own telemetry phones home by default (lmcache: usage_telemetry/identity.py)
QUIET_ENV = {"LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1", "LMCACHE_LOG_LEVEL": "INFO"}


def kv_transfer_json(cfg: dict) -> str:
    """vLLM's ``--kv-transfer-config`` value: compact JSON with sorted keys."""
    return json.dumps(cfg, separators=(",", ":"), sort_keys=True)


def kv_transfer_config(s: dict, ports: dict) -> dict:
    """vLLM's ``--kv-transfer-config`` (fields of vllm: config/kv_transfer.py)."""
    if s["mode"] == "in_process":
        return {"kv_connector": "LMCacheConnectorV1", "kv_role": "kv_both"}
    return {"kv_connector": "LMCacheMPConnector", "kv_role": "kv_both",
            "kv_connector_extra_config": {
                # lmcache: integration/vllm/lmcache_mp_connector.py (extra config keys)
                "lmcache.mp.host": f"tcp://{HOST}", "lmcache.mp.port": ports["mp"],
                "lmcache.mp.hash_algorithm": s["hash_algorithm"]}}


def in_process_config(s: dict, store_dir: Path, ports: dict) -> dict:
    """The LMCache YAML for the in-process connector (keys of lmcache: v1/config.py)."""
    c = {"chunk_size": s["chunk_size"], "local_cpu": True, "max_local_cpu_size": float(s["cpu_gb"]),
         "pre_caching_hash_algorithm": s["hash_algorithm"], "save_unfull_chunk": False,
         # LMCache's own counters (lmcache:*) are served by its internal API server; worker 0
         # listens on port_start + 1 (lmcache: v1/internal_api_server/api_server.py)
         "internal_api_server_enabled": True, "internal_api_server_host": HOST,
         "internal_api_server_port_start": ports["internal_api"] - 1,
         "internal_api_server_include_index_list": [1]}
    if s["store"] == "local_disk":
        c["local_disk"] = f"file://{store_dir / 'local_disk'}/"
        c["max_local_disk_size"] = float(s["disk_gb"])
    elif s["store"] == "fs":
        c["remote_storage_plugins"] = ["fs"]
        c["remote_serde"] = "naive"
        c["extra_config"] = {"remote_storage_plugin.fs.base_path": str(store_dir / "fs")}
    elif s["store"] in REMOTE_STORES:
        # remote_url and remote_serde: lmcache 0.5.3 v1/config.py (remote_serde's default
        # "naive"); redis:// selects RedisConnectorAdapter (v1/storage_backend/connector/
        # redis_adapter.py, the redis package: a requirement of the lmcache wheel), lm:// the
        # LMServerConnectorAdapter (lm_adapter.py) of `python -m lmcache.v1.server`
        c["remote_url"] = remote_store.spec_url(s["store"], ports["remote"])
        c["remote_serde"] = "naive"
    c.update(s["config_overrides"])
    return c


def store_paths(s: dict, store_dir: Path) -> list[str]:
    sub = {"local_disk": "local_disk", "fs": "fs" if s["mode"] == "in_process" else "l2"}
    return [str(store_dir / sub[s["store"]])] if s["store"] in sub else []


def apply(plan, arm_name: str, cfg: dict, *, run_dir: Path, store_root: Path | str | None = None,
          run_id: str | None = None, ports: dict | None = None, make_dirs: bool = True,
          redis_server: str = remote_store.REDIS_DEFAULT) -> None:
    """Fill ``plan`` (a ServerPlan) for an LMCache arm; writes the LMCache YAML to run_dir.

    The store lives in ``store_root/<arm>/<run_id>`` (a new folder per run); without a
    store_root, under run_dir. A remote store (redis, lm_server) gets a port here and its
    process in ``plan.remote_store`` (``redis_server``: the binary, server.redis_server).
    """
    s = settings(cfg)
    run_id = run_id or new_run_id()
    store_dir = (Path(store_root) / arm_name if store_root else Path(run_dir) / "lmcache-store") / run_id
    store_dir = store_dir.absolute()
    if ports is None:
        ports = {"internal_api": free_port()} if s["mode"] == "in_process" else {
            "mp": free_port(), "http": free_port()}
        if s["store"] in REMOTE_STORES:
            ports["remote"] = free_port()
    plan.env.update(QUIET_ENV)
    plan.env.setdefault("PYTHONHASHSEED", "0")
    plan.vllm_args += ["--kv-transfer-config", kv_transfer_json(kv_transfer_config(s, ports))]
    info = {"mode": s["mode"], "store": s["store"], "chunk_size": s["chunk_size"],
            "hash_algorithm": s["hash_algorithm"], "run_id": run_id, "store_dir": str(store_dir),
            "store_paths": store_paths(s, store_dir), "evict_page_cache": s["evict_page_cache"],
            "delete_store": s["delete_store"], "metrics_urls": []}
    for p in info["store_paths"] if make_dirs else []:
        Path(p).mkdir(parents=True, exist_ok=True)
    if s["mode"] == "in_process":
        plan.lmcache_config = in_process_config(s, store_dir, ports)
        path = Path(run_dir).absolute() / "lmcache.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(plan.lmcache_config, sort_keys=True))
        plan.env[CONFIG_FILE_ENV] = str(path)
        info["config_file"] = str(path)
        info["metrics_urls"] = [f"http://{HOST}:{ports['internal_api']}/metrics"]
        plan.notes.append("lmcache:* counters (in-process) are flushed to Prometheus every 10 s "
                          "(lmcache: v1/cache_engine.py LMCacheStatsLogger); per-phase deltas of "
                          "them are approximate, phases.<phase>.lmcache_log is per request")
    else:
        url = f"http://{HOST}:{ports['http']}"
        plan.lmcache_server = {"argv": server_argv(s, store_dir, ports),
                               "health_url": f"{url}/healthcheck", "metrics_url": f"{url}/metrics",
                               "env": dict(QUIET_ENV)}
    if s["store"] == "local_disk":
        plan.notes.append("LMCache's LocalDiskBackend (0.5.3 and 0.5.6) keeps its index in memory "
                          "only and does not rescan its folder at start (v1/storage_backend/"
                          "local_disk_backend.py), so files left by a stopped vLLM are not found")
    if s["store"] in REMOTE_STORES:
        # started before vLLM and kept across its restarts (kvreuse.servers); a missing
        # redis-server is a ServerError here, before anything starts
        plan.remote_store = remote_store.spec(s["store"], ports["remote"], store_dir, redis_server)
        info["store_paths"] += [plan.remote_store["data_dir"]] if plan.remote_store["data_dir"] else []
        info["remote_url"] = plan.remote_store["url"]
        plan.notes.append(f"remote store {s['store']} at {plan.remote_store['url']} (started by the run, "
                          f"outlives vLLM's restarts; kvreuse.remote_store)")
    info["ports"] = dict(ports)
    plan.lmcache = info


#: vLLM flags that attach a KV connector, each with one value: LMCache's and vLLM's own
#: offloading (kvreuse.offload: --kv-offloading-size/--kv-offloading-backend)
CONNECTOR_FLAGS = ("--kv-transfer-config", "--kv-offloading-size", "--kv-offloading-backend")


def apc_only(plan) -> tuple[list[str], dict]:
    """vLLM's flags and environment for the same arm without the connector (APC only): no
    LMCache, no offloading."""
    args, out = list(plan.vllm_args), []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in CONNECTOR_FLAGS:
            skip = True
            continue
        if a.split("=", 1)[0] not in CONNECTOR_FLAGS:
            out.append(a)
    env = {k: v for k, v in plan.env.items() if k != CONFIG_FILE_ENV}
    return out, env
