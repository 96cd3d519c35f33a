"""LMCache arms: the vLLM connector flags, the LMCache config file and the LMCache server command.

An arm's ``lmcache:`` block (config.yaml, schema in workflow/schemas/config.schema.yaml) names
a mode and a store; :func:`apply` turns it into processes and files. Every flag, config key,
connector name, environment variable and metric name below was checked against the sources
that run on the GPU host: LMCache 0.5.6 and vLLM 0.26.0 (paths relative to each package).

- ``in_process``: vLLM loads ``LMCacheConnectorV1`` (vllm: distributed/kv_transfer/kv_connector/
  factory.py), which reads the YAML named by ``LMCACHE_CONFIG_FILE`` (lmcache:
  integration/vllm/utils.py). Stores: ``cpu`` (``local_cpu``), ``local_disk`` (``local_disk`` +
  ``max_local_disk_size``) and ``fs`` (the FS remote connector, the one an ``fs://`` URL selects,
  configured as ``remote_storage_plugins: [fs]``: the legacy ``remote_url: fs:///path`` form
  fails ``parse_remote_url``'s host/port assertion and LMCache then runs with no remote store,
  logging only a warning).
- ``server``: a standalone ``lmcache server`` (lmcache: cli/commands/server.py) on 127.0.0.1,
  started and stopped by the run like vLLM; vLLM loads ``LMCacheMPConnector`` and talks to it
  over ZMQ. Stores: ``cpu`` (L1 in the server's memory) and ``fs`` (plus the ``fs`` L2 adapter,
  lmcache: v1/distributed/l2_adapters/fs_l2_adapter.py, whose lookups stat the files, so
  it survives a server restart).

Keys hash the same across processes: vLLM's block hash is ``--prefix-caching-hash-algo``
(sha256_cbor) seeded by ``PYTHONHASHSEED`` (vllm: v1/core/kv_cache_utils.py ``init_none_hash``
draws ``os.urandom`` when it is unset); in-process LMCache hashes token chunks with the vLLM
function named by ``pre_caching_hash_algorithm`` (default ``builtin``, which falls back to
Python's ``hash``) and calls the same ``init_none_hash``, so we set it to vLLM's algorithm; the
LMCache server hashes token ids itself (``--hash-algorithm``, default blake3, no seed).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .config import ConfigError
from .server import HOST, free_port

log = logging.getLogger(__name__)

MODES = ("in_process", "server")
STORES = {"in_process": ("cpu", "local_disk", "fs"), "server": ("cpu", "fs")}
#: stores whose data lies in files (listed after a stop; need disk space)
FILE_STORES = ("local_disk", "fs")
#: in-process: names vllm.utils.hashing.get_hash_fn_by_name knows (vLLM 0.26.0)
IN_PROCESS_HASHES = ("sha256_cbor", "sha256", "xxhash", "xxhash_cbor")
#: server: --hash-algorithm choices (lmcache: v1/multiprocess/config.py)
SERVER_HASHES = ("blake3", "sha256_cbor", "builtin")
#: vLLM's KV block size on CUDA; LMCache chunks must be whole blocks (the MP connector checks it)
VLLM_BLOCK_SIZE = 16
ARM_KEYS = {
    "mode": "in_process | server",
    "store": "cpu | local_disk | fs (server: cpu | fs)",
    "chunk_size": "tokens per LMCache chunk, a multiple of 16",
    "cpu_gb": "GiB of pinned CPU memory (max_local_cpu_size / --l1-size-gb)",
    "disk_gb": "GiB for a file store (max_local_disk_size; checked by the preflight)",
    "hash_algorithm": "in_process: " + ", ".join(IN_PROCESS_HASHES) + "; server: "
                      + ", ".join(SERVER_HASHES),
    "evict_page_cache": "after a stop, drop the store's files from the page cache",
    "delete_store": "delete this run's store folder when the run ends (default false)",
    "config_overrides": "in_process only: extra LMCache config keys",
    "server_args": "server only: extra `lmcache server` flags",
}
#: the LMCache config keys written by :func:`in_process_config` (all in lmcache: v1/config.py)
MANAGED_KEYS = ("chunk_size", "local_cpu", "max_local_cpu_size", "pre_caching_hash_algorithm",
                "save_unfull_chunk", "local_disk", "max_local_disk_size", "remote_storage_plugins",
                "remote_serde", "extra_config", "internal_api_server_enabled",
                "internal_api_server_host", "internal_api_server_port_start",
                "internal_api_server_include_index_list")
CONFIG_FILE_ENV = "LMCACHE_CONFIG_FILE"
#: LMCache's own telemetry phones home by default (lmcache: usage_telemetry/identity.py)
QUIET_ENV = {"LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1", "LMCACHE_LOG_LEVEL": "INFO"}
#: the compiled kernels: lmcache.cuda_ops (0.5.4 and later, optional, torch fallback) or
#: lmcache.c_ops (0.5.3 and earlier, required)
KERNEL_MODULES = ("lmcache.cuda_ops", "lmcache.c_ops")
FALLBACK_LOG_RE = re.compile(r"lmcache\.(cuda_ops|c_ops) compiled extension not found")
GIB = 1 << 30


class PreflightError(RuntimeError):
    """A store folder is not writable or too small; the message says which and what to do."""


# -- config checks -------------------------------------------------------------------------
def settings(cfg: dict) -> dict:
    """The arm's ``lmcache:`` block with defaults filled in."""
    mode = cfg.get("mode")
    out = {"store": "cpu", "chunk_size": 256, "cpu_gb": 5.0, "evict_page_cache": True,
           "delete_store": False, "config_overrides": {}, "server_args": [],
           "hash_algorithm": "sha256_cbor" if mode == "in_process" else "blake3"}
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


# -- plans ---------------------------------------------------------------------------------
def new_run_id() -> str:
    """A fresh store subfolder name per run, so that a rerun starts truly cold."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"


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
    c.update(s["config_overrides"])
    return c


def server_argv(s: dict, store_dir: Path, ports: dict) -> list[str]:
    """``lmcache server`` (flags of lmcache: v1/multiprocess/config.py, v1/distributed/config.py).

    Its Prometheus counters are served by the HTTP frontend at /metrics (the standalone
    --prometheus-port server is not started in this mode: v1/multiprocess/http_server.py).
    """
    argv = [sys.executable, "-m", "lmcache.cli.main", "server",
            "--host", HOST, "--port", str(ports["mp"]),
            "--http-host", HOST, "--http-port", str(ports["http"]),
            "--chunk-size", str(s["chunk_size"]), "--hash-algorithm", s["hash_algorithm"],
            "--l1-size-gb", str(float(s["cpu_gb"])), "--eviction-policy", "LRU"]
    if s["store"] == "fs":
        argv += ["--l2-adapter", json.dumps({"type": "fs", "base_path": str(store_dir / "l2")},
                                            separators=(",", ":"))]
    return argv + [str(a) for a in s["server_args"]]


def store_paths(s: dict, store_dir: Path) -> list[str]:
    sub = {"local_disk": "local_disk", "fs": "fs" if s["mode"] == "in_process" else "l2"}
    return [str(store_dir / sub[s["store"]])] if s["store"] in sub else []


def apply(plan, arm_name: str, cfg: dict, *, run_dir: Path, store_root: Path | str | None = None,
          run_id: str | None = None, ports: dict | None = None, make_dirs: bool = True) -> None:
    """Fill ``plan`` (an arms.ServerPlan) for an LMCache arm; writes the LMCache YAML to run_dir.

    The store lives in ``store_root/<arm>/<run_id>`` (a new folder per run); without a
    store_root, under run_dir.
    """
    from .arms import kv_transfer_json

    s = settings(cfg)
    run_id = run_id or new_run_id()
    store_dir = (Path(store_root) / arm_name if store_root else Path(run_dir) / "lmcache-store") / run_id
    store_dir = store_dir.absolute()
    if ports is None:
        ports = {"internal_api": free_port()} if s["mode"] == "in_process" else {
            "mp": free_port(), "http": free_port()}
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
        plan.notes.append("LMCache 0.5.6's LocalDiskBackend keeps its index in memory only and "
                          "does not rescan its folder at start (v1/storage_backend/"
                          "local_disk_backend.py), so files left by a stopped vLLM are not found")
    info["ports"] = dict(ports)
    plan.lmcache = info


def apc_only(plan) -> tuple[list[str], dict]:
    """vLLM's flags and environment for the same arm without the connector (APC only)."""
    args, out = list(plan.vllm_args), []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--kv-transfer-config":
            skip = True
            continue
        if not a.startswith("--kv-transfer-config="):
            out.append(a)
    env = {k: v for k, v in plan.env.items() if k != CONFIG_FILE_ENV}
    return out, env


# -- during and after a run ----------------------------------------------------------------
def list_store(plan) -> dict:
    """Files and bytes of the arm's store folders (after a graceful stop).

    With ``evict_page_cache`` each file is fsynced and dropped from the page cache
    (posix_fadvise DONTNEED, best effort: no root needed, but some file systems ignore it) so
    that a reload after the restart reads the device, not memory.
    """
    info = plan.lmcache or {}
    out = {"paths": {}, "files": 0, "bytes": 0, "page_cache_evicted_files": 0}
    for root in info.get("store_paths", []):
        files, nbytes, sample = 0, 0, []
        for dirpath, _, names in os.walk(root):
            for n in sorted(names):
                p = os.path.join(dirpath, n)
                try:
                    nbytes += os.path.getsize(p)
                except OSError:
                    continue
                files += 1
                if len(sample) < 5:
                    sample.append(os.path.relpath(p, root))
                if info.get("evict_page_cache"):
                    out["page_cache_evicted_files"] += _evict(p)
        out["paths"][root] = {"files": files, "bytes": nbytes, "sample": sample}
        out["files"] += files
        out["bytes"] += nbytes
    if not info.get("store_paths"):
        out["note"] = "no file store: the KV cache lives in process memory"
    return out


def _evict(path: str) -> int:
    if not hasattr(os, "posix_fadvise"):
        return 0
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return 1
    except OSError:
        return 0
    finally:
        os.close(fd)


LOG_FILES = ("vllm.log", "lmcache-server.log")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# lmcache: v1/cache_engine.py (retrieve: size in GiB as "gb"; store: "GB", also GiB)
_RETRIEVED = re.compile(r"Retrieved (\d+) out of (\d+) required tokens \(from (\d+) total tokens\)"
                        r"\. size: ([0-9.]+) gb, cost ([0-9.]+) ms")
_STORED = re.compile(r"Stored (\d+) out of total (\d+) tokens\. size: ([0-9.]+) GB, "
                     r"cost ([0-9.]+) ms")


def log_marks(log_dir: Path | str) -> dict[str, int]:
    """Current sizes of the server logs, so that a phase can read only what it wrote."""
    marks = {}
    for name in LOG_FILES:
        p = Path(log_dir) / name
        marks[str(p)] = p.stat().st_size if p.exists() else 0
    return marks


def log_stats(marks: dict[str, int]) -> dict:
    """LMCache's per-request retrieve and store lines written since ``marks``.

    Bytes are converted from LMCache's GiB; times are its own (retrieve: lookup to data in the
    GPU's paged buffer, including disk or file reads).
    """
    out = {"retrieves": 0, "retrieved_tokens": 0, "required_tokens": 0, "retrieve_bytes": 0,
           "retrieve_ms": 0.0, "stores": 0, "stored_tokens": 0, "store_bytes": 0, "store_ms": 0.0,
           "kernel_fallback_logged": False}
    for path, start in marks.items():
        p = Path(path)
        if not p.exists():
            continue
        with open(p, "rb") as f:
            f.seek(start)
            text = _ANSI.sub("", f.read().decode(errors="replace"))
        for m in _RETRIEVED.finditer(text):
            out["retrieves"] += 1
            out["retrieved_tokens"] += int(m.group(1))
            out["required_tokens"] += int(m.group(2))
            out["retrieve_bytes"] += round(float(m.group(4)) * GIB)
            out["retrieve_ms"] += float(m.group(5))
        for m in _STORED.finditer(text):
            out["stores"] += 1
            out["stored_tokens"] += int(m.group(1))
            out["store_bytes"] += round(float(m.group(3)) * GIB)
            out["store_ms"] += float(m.group(4))
        out["kernel_fallback_logged"] |= bool(FALLBACK_LOG_RE.search(text))
    return out


_PROBE = r"""
import importlib, importlib.util, json
out = {}
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
try:
    import lmcache
    out["lmcache"] = getattr(lmcache, "__version__", None)
except Exception as e:
    out["lmcache_error"] = f"{type(e).__name__}: {e}"
for m in MODULES:
    try:
        if importlib.util.find_spec(m) is None:
            continue
    except Exception:
        continue
    try:
        importlib.import_module(m)
        out[m] = "loaded"
    except Exception as e:
        out[m] = f"{type(e).__name__}: {e}"[:500]
print(json.dumps(out))
"""


def probe_kernels(env: dict | None = None, python: str = sys.executable,
                  timeout_s: float = 180) -> dict:
    """Import LMCache's compiled kernels the way the servers will (same Python, same env)."""
    code = f"MODULES = {KERNEL_MODULES!r}\n" + _PROBE
    try:
        r = subprocess.run([python, "-c", code], env={**os.environ, **(env or {})},
                           capture_output=True, text=True, timeout=timeout_s)
        found = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
        if r.returncode and not found:
            found = {"probe_error": r.stderr.strip()[-500:]}
        found["fallback_logged_by_probe"] = bool(FALLBACK_LOG_RE.search(r.stderr))
    except (subprocess.SubprocessError, OSError, json.JSONDecodeError) as e:
        found = {"probe_error": f"{type(e).__name__}: {e}"}
    mods = {m: found[m] for m in KERNEL_MODULES if m in found}
    if any(v == "loaded" for v in mods.values()):
        found["kernels"] = "loaded"
    elif mods:
        found["kernels"] = "fallback"  # 0.5.4+: torch copies; 0.5.3-: LMCache cannot run
    else:
        found["kernels"] = "unknown"
    return found


def finish(plan, log_dir: Path | str, model_dir: Path | str | None = None) -> dict:
    """The meta's ``lmcache`` block at the end of a run; deletes the store if config asks."""
    info = dict(plan.lmcache or {})
    probe = probe_kernels(plan.env)
    seen = log_stats({str(Path(log_dir) / n): 0 for n in LOG_FILES})["kernel_fallback_logged"]
    info["kernel_probe"] = probe
    info["fallback_log_line_seen"] = seen
    # the servers' own logs are the runtime truth; the probe says why
    info["cuda_kernels"] = ("fallback" if seen or probe.get("fallback_logged_by_probe")
                            else probe["kernels"])
    if model_dir is not None:
        info["kv_bytes_per_token"] = model_kv_bytes_per_token(model_dir)
    if info.get("delete_store") and info.get("store_dir"):
        shutil.rmtree(info["store_dir"], ignore_errors=True)
        info["store_deleted"] = True
    return info


def model_kv_bytes_per_token(model_dir: Path | str) -> int | None:
    from .kvmodel import kv_bytes_per_token

    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    return kv_bytes_per_token(cfg, dtype if isinstance(dtype, str) else "bfloat16")


# -- preflight (rule lmcache_store) ----------------------------------------------------------
def preflight(store_root: Path | str, arms: dict[str, dict], runs: list[list[str]], *,
              has_cuda: bool) -> dict:
    """Make the store folders, check space and memory, write each arm's LMCache config.

    ``arms``: name -> arm config (LMCache arms of this platform); ``runs``: [experiment, arm]
    pairs this platform measures. Raises PreflightError with what to change.
    """
    from .arms import ServerPlan

    root = Path(store_root).absolute()
    report = {"store_root": str(root), "has_cuda": has_cuda, "arms": {}, "checks": {}}
    for exp, arm in runs:
        d = root / exp / arm
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".kvreuse-write-test"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise PreflightError(f"LMCache store folder {d} is not writable ({e}); set "
                                 f"paths.lmcache in config.yaml to a writable folder") from e
    configs = root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    for name, arm in sorted(arms.items()):
        s = settings(arm["lmcache"])
        p = ServerPlan(vllm_args=[], env={})
        placeholder = {"internal_api": 50001, "mp": 50002, "http": 50003}
        apply(p, name, arm["lmcache"], run_dir=configs / name, store_root=root / "<experiment>",
              run_id="<run>", ports=placeholder, make_dirs=False)
        shown = {"vllm_args": p.vllm_args, "env": p.env, "lmcache_config": p.lmcache_config,
                 "lmcache_server": p.lmcache_server, "store_paths": p.lmcache["store_paths"],
                 "ports": "example values: each run picks free ports"}
        (configs / f"{name}.json").write_text(json.dumps(shown, indent=2, sort_keys=True) + "\n")
        report["arms"][name] = {"mode": s["mode"], "store": s["store"], "cpu_gb": s["cpu_gb"],
                                "disk_gb": s.get("disk_gb"), "config": str(configs / f"{name}.json")}
    if not has_cuda:
        report["status"] = "skipped"
        report["reason"] = "LMCache needs CUDA"
        report["checks"] = "skipped: the LMCache arms are recorded as not run here"
        return report
    disk = [(a["disk_gb"], n) for n, a in report["arms"].items()
            if a["store"] in FILE_STORES and a["disk_gb"]]
    usage = shutil.disk_usage(root)
    need_disk = max(disk)[0] * GIB if disk else 0
    report["checks"]["disk"] = {"free_bytes": usage.free, "required_bytes": int(need_disk),
                                "rule": "free space >= the largest disk_gb (runs are one at a time; "
                                        "earlier runs' stores are kept)"}
    if usage.free < need_disk:
        gb, arm = max(disk)
        raise PreflightError(
            f"LMCache store {root} has {usage.free / GIB:.1f} GiB free but arm {arm!r} may use "
            f"disk_gb={gb} GiB; free space (old runs' stores under {root} are kept unless "
            f"delete_store is set), lower arms.{arm}.lmcache.disk_gb, or point paths.lmcache elsewhere")
    avail = _mem_available()
    need_mem = max(a["cpu_gb"] for a in report["arms"].values()) * GIB if report["arms"] else 0
    report["checks"]["memory"] = {"available_bytes": avail, "required_bytes": int(need_mem)}
    if avail is not None and avail < need_mem:
        raise PreflightError(f"{avail / GIB:.1f} GiB of memory available but an LMCache arm pins "
                             f"{need_mem / GIB:.1f} GiB (cpu_gb); lower arms.<arm>.lmcache.cpu_gb")
    report["status"] = "ok"
    return report


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
