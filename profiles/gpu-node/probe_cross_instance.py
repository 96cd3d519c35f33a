"""A check, not a measurement: can two vLLM instances on one GPU share one LMCache server
(the ``lmcache_mp`` arm's plan), does instance B get hits on a prefix that A stored, and how
much GPU memory does the LMCache server hold before and after A stops?

    PYTHONPATH=workflow python profiles/gpu-node/probe_cross_instance.py OUT_DIR MODEL_DIR [UTIL]

Servers are started and stopped by kvreuse (their own process groups, SIGINT to stop). The
counter deltas of each step, the GPU memory per process and the start times go to
OUT_DIR/probe.json.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from kvreuse import metrics
from kvreuse.client import completion_payload, stream_completion
from kvreuse.config import server_config
from kvreuse.plan import plan
from kvreuse.server import ManagedProcess, vllm_server
from kvreuse.workloads import PromptMaker

PREFIX_TOKENS = 8192


def gpu_memory() -> list[dict]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    return [dict(zip(("pid", "name", "used_mib"), (x.strip() for x in line.split(","))))
            for line in out.splitlines() if line.strip()]


async def send(base_url: str, prompt: list[int]) -> dict:
    async with httpx.AsyncClient(timeout=None) as c:
        r = await stream_completion(c, base_url, completion_payload("llama", prompt, 16), 600)
    return {k: v for k, v in r.to_dict().items() if k not in ("output_text", "itl_ms", "output_token_ids")}


def step(out: dict, name: str, server, urls: list[str], prompt: list[int]) -> None:
    scraper = metrics.Scraper(urls[:1], optional=tuple(urls[1:]))
    before = scraper.scrape()
    res = asyncio.run(send(server.base_url, prompt))
    time.sleep(2)
    delta = metrics.delta(before, scraper.scrape())
    res["counters"] = {k: v for k, v in delta.items() if v and ("prefix_cache" in k or "lmcache" in k
                                                                or "prefill_time" in k)}
    out["steps"][name] = res
    print(f"{name}: ttft {res['ttft_ms']} ms, error {res['error']}, counters "
          f"{ {k: v for k, v in res['counters'].items() if 'prefix_cache' in k} }", flush=True)


def main(out_dir: str, model_dir: str, util: str = "0.35") -> None:
    out_path = Path(out_dir)
    cfg = yaml.safe_load(Path("config.yaml").read_text())
    srv = server_config(cfg, "h200")
    srv["max_model_len"] = 16384
    srv["extra_args"] = ["--gpu-memory-utilization", util, "--enforce-eager"]
    p = plan("lmcache_mp", cfg["arms"]["lmcache_mp"], server=srv, model=cfg["models"]["llama-3.1-8b"],
             run_dir=out_path / "run", has_cuda=True, store_root=Path("/root/lmcache-store"))
    out = {"vllm_args": p.vllm_args, "lmcache_server": p.lmcache_server["argv"], "steps": {},
           "starts_s": {}, "gpu_memory": {}}
    side = ManagedProcess("lmcache-server", p.lmcache_server["argv"], health_url=p.lmcache_server["health_url"],
                          log_path=out_path / "lmcache-server.log", env={**p.env, **p.lmcache_server["env"]},
                          startup_timeout_s=300, stop_timeout_s=30)
    side.start()
    out["starts_s"]["lmcache_server"] = round(side.startup_s, 1)
    pm = PromptMaker.for_model(Path(model_dir), 0)
    shared, fresh = pm.tokens("probe/shared", PREFIX_TOKENS), pm.tokens("probe/fresh", PREFIX_TOKENS)
    servers = {}
    try:
        for name in ("a", "b"):
            s = vllm_server(Path(model_dir), "llama", p.vllm_args, log_path=out_path / f"vllm-{name}.log",
                            env=p.env, startup_timeout_s=420, stop_timeout_s=60)
            s.start()
            servers[name] = s
            out["starts_s"][name] = round(s.startup_s, 1)
            print(f"vLLM {name} started in {s.startup_s:.0f} s", flush=True)
        out["gpu_memory"]["both_up"] = gpu_memory()
        urls = {n: [f"{s.base_url}/metrics", p.lmcache_server["metrics_url"]] for n, s in servers.items()}
        step(out, "a_warmup", servers["a"], urls["a"], pm.tokens("probe/wa", 256))
        step(out, "b_warmup", servers["b"], urls["b"], pm.tokens("probe/wb", 256))
        step(out, "a_populate", servers["a"], urls["a"], shared)
        step(out, "b_same_prefix", servers["b"], urls["b"], shared)
        step(out, "b_never_seen", servers["b"], urls["b"], fresh)
        out["stop_a_returncode"] = servers.pop("a").stop()
        time.sleep(5)
        out["gpu_memory"]["after_a_stopped"] = gpu_memory()
    finally:
        for s in servers.values():
            s.stop()
        side.stop()
    (out_path / "probe.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
