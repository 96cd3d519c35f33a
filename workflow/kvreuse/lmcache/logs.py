"""During and after an LMCache run: its log lines, the compiled-kernel probe, the meta block.

:func:`log_marks` and :func:`log_stats` read LMCache's per-request retrieve and store lines a
phase wrote; :func:`finish` builds the meta's ``lmcache`` block (kernels loaded or fallback,
bytes per token) and deletes the store if the arm asks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ..logtail import log_since, log_size
from .store import GIB, finish_store

LOG_FILES = ("vllm.log", "lmcache-server.log")
#: the compiled kernels' module: lmcache.c_ops (0.5.3, bound by its device-ops object, torch
#: fallback when it does not load) or lmcache.cuda_ops (0.5.6's name in its fallback warning)
KERNEL_MODULES = ("lmcache.cuda_ops", "lmcache.c_ops")
FALLBACK_LOG_RE = re.compile(r"lmcache\.(cuda_ops|c_ops) compiled extension not found")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# lmcache: v1/cache_engine.py (retrieve: size in GiB as "gb"; store: "GB", also GiB)
_RETRIEVED = re.compile(r"Retrieved (\d+) out of (\d+) required tokens \(from (\d+) total tokens\)"
                        r"\. size: ([0-9.]+) gb, cost ([0-9.]+) ms")
_STORED = re.compile(r"Stored (\d+) out of total (\d+) tokens\. size: ([0-9.]+) GB, "
                     r"cost ([0-9.]+) ms")


def log_marks(log_dir: Path | str) -> dict[str, int]:
    """Current sizes of the server logs, so that a phase can read only what it wrote."""
    return {str(Path(log_dir) / name): log_size(Path(log_dir) / name) for name in LOG_FILES}


def log_stats(marks: dict[str, int]) -> dict:
    """LMCache's per-request retrieve and store lines written since ``marks``.

    Bytes are converted from LMCache's GiB; times are its own (retrieve: lookup to data in the
    GPU's paged buffer, including disk or file reads).
    """
    out = {"retrieves": 0, "retrieved_tokens": 0, "required_tokens": 0, "retrieve_bytes": 0,
           "retrieve_ms": 0.0, "stores": 0, "stored_tokens": 0, "store_bytes": 0, "store_ms": 0.0,
           "kernel_fallback_logged": False}
    for path, start in marks.items():
        if (written := log_since(path, start)) is None:
            continue
        text = _ANSI.sub("", written)
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


# LMCache 0.5.3+ imports ``lmcache.c_ops`` (the compiled CUDA ops) inside its device-ops object
# and then registers a shim of that name in sys.modules, which has no __spec__: the object itself
# says whether the compiled module was bound (its native ops are instance attributes, the torch
# fallback's are the class's methods). Older releases: import the module by name.
_PROBE = r"""
import importlib, importlib.util, json, sys
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
try:
    from lmcache.v1.platform import resolve_device_ops
    ops = resolve_device_ops(lmcache.torch_device_type)
    native = sorted(k for k, v in vars(ops).items() if not k.startswith("_") and callable(v))
    out["device_ops"] = f"{type(ops).__module__}.{type(ops).__name__}"
    out["device_type"] = str(lmcache.torch_device_type)
    out["native_ops_bound"] = len(native)
    if out["device_type"] != "cpu":
        out["lmcache.c_ops"] = ("loaded" if native else
                                "not bound: the device ops run on LMCache's torch fallback")
except Exception as e:
    out["device_ops_error"] = f"{type(e).__name__}: {e}"[:500]
for m in ([] if "device_ops" in out else MODULES):
    try:
        if m not in sys.modules and importlib.util.find_spec(m) is None:
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
    return finish_store(info, model_dir)
