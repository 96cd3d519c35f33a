"""The store folders of the LMCache arms: the preflight, listing and eviction after a stop.

:func:`preflight` (rule lmcache_store) makes the folders and checks space and memory before any
run; :func:`list_store` (after a graceful stop) counts the files and, with
``evict_page_cache``, drops them from the page cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

from ..errors import PreflightError
from ..kvmodel import kv_bytes_per_token
from .flags import apply
from .settings import FILE_STORES, settings

GIB = 1 << 30


# -- preflight (rule lmcache_store) ----------------------------------------------------------
def preflight(store_root: Path | str, arms: dict[str, dict], runs: list[list[str]], *,
              has_cuda: bool) -> dict:
    """Make the store folders, check space and memory, write each arm's LMCache config.

    ``arms``: name -> arm config (LMCache arms of this platform); ``runs``: [experiment, arm]
    pairs this platform measures. Raises PreflightError with what to change.
    """
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
        # the fields of kvreuse.plan.ServerPlan that flags.apply fills (duck-typed: this
        # package does not import kvreuse.plan)
        p = SimpleNamespace(vllm_args=[], env={}, notes=[], lmcache_config=None,
                            lmcache_server=None, lmcache=None, remote_store=None)
        placeholder = {"internal_api": 50001, "mp": 50002, "http": 50003, "remote": 50004}
        apply(p, name, arm["lmcache"], run_dir=configs / name, store_root=root / "<experiment>",
              run_id="<run>", ports=placeholder, make_dirs=False)
        shown = {"vllm_args": p.vllm_args, "env": p.env, "lmcache_config": p.lmcache_config,
                 "lmcache_server": p.lmcache_server, "remote_store": p.remote_store,
                 "store_paths": p.lmcache["store_paths"],
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


#: the host's memory limit in GiB where MemAvailable says too little: the lent hosts with several
#: H200 start with about 31 GiB and grow to their limit (256 GiB and more) as it is used
#: (profiles/gpu-node/campaign-step.sh exports it from HOST_MEM_GB)
HOST_MEM_ENV = "KVREUSE_HOST_MEM_GB"


def _mem_available() -> int | None:
    """Bytes of memory the stores may take: $KVREUSE_HOST_MEM_GB where set, else MemAvailable."""
    if os.environ.get(HOST_MEM_ENV, "").strip():
        return int(float(os.environ[HOST_MEM_ENV]) * GIB)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# -- after a stop --------------------------------------------------------------------------
def list_store(plan) -> dict:
    """Files and bytes of the arm's store folders (after a graceful stop): an LMCache arm's
    (``plan.lmcache``) or the file tier of vLLM's own offloading (``plan.offload``,
    kvreuse.offload), whose info names its folders the same way (``store_paths``).

    With ``evict_page_cache`` each file is fsynced and dropped from the page cache
    (posix_fadvise DONTNEED, best effort: no root needed, but some file systems ignore it) so
    that a reload after the restart reads the device, not memory.
    """
    info = plan.lmcache or getattr(plan, "offload", None) or {}
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


def finish_store(info: dict, model_dir: Path | str | None = None) -> dict:
    """The end of a run's store, for a meta block (LMCache's or vLLM offloading's): the model's
    KV bytes per token, and the store deleted where the arm asks (``delete_store``)."""
    if model_dir is not None:
        info["kv_bytes_per_token"] = model_kv_bytes_per_token(model_dir)
    if info.get("delete_store") and info.get("store_dir"):
        shutil.rmtree(info["store_dir"], ignore_errors=True)
        info["store_deleted"] = True
    return info


def model_kv_bytes_per_token(model_dir: Path | str) -> int | None:
    """KV bytes per token of the model in ``model_dir`` (its config.json), None if unreadable."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    return kv_bytes_per_token(cfg, dtype if isinstance(dtype, str) else "bfloat16")
