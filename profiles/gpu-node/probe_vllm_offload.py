"""A check, not a measurement: does vLLM's own KV offloading (OffloadingConnector with
TieringOffloadingSpec: a CPU tier plus a file-system tier) start on the GPU host, which counters
does it report, and does a restarted vLLM find the file tier's blocks again?

    PYTHONPATH=workflow python profiles/gpu-node/probe_vllm_offload.py OUT_DIR [MODEL_DIR]

It makes the dummy Llama-3.1-8B folder (kvreuse.models) unless MODEL_DIR is given, starts vLLM
with the connector (kvreuse.server: its own process group, SIGINT to stop), sends an unrelated
warm-up, a populate prompt, the same prompt again, stops, lists the file tier, restarts, sends
an unrelated warm-up, the populate prompt again and a never-seen prompt of the same length,
and writes the counter deltas of each step and every kv_offload metric name to OUT_DIR/probe.json.
The issue's arms (vllm_offload_cpu, vllm_offload_fs) are built from what this finds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import httpx
import yaml

from kvreuse import metrics
from kvreuse.client import completion_payload, stream_completion
from kvreuse.models import make_model
from kvreuse.server import vllm_server
from kvreuse.workloads import PromptMaker

PREFIX_TOKENS = 8192


def kv_transfer(root: Path) -> str:
    return json.dumps({"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
                       "kv_connector_extra_config": {
                           "spec_name": "TieringOffloadingSpec",
                           "cpu_bytes_to_use": 8 << 30,
                           "secondary_tiers": [{"type": "fs", "root_dir": str(root)}]}},
                      separators=(",", ":"))


def store_listing(root: Path) -> dict:
    files = [p for p in root.rglob("*") if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


async def send(base_url: str, prompt: list[int]) -> dict:
    async with httpx.AsyncClient(timeout=None) as c:
        r = await stream_completion(c, base_url, completion_payload("llama", prompt, 16), 600)
    return {k: v for k, v in r.to_dict().items() if k not in ("output_text", "itl_ms")}


def step(out: dict, name: str, server, prompt: list[int]) -> None:
    scraper = metrics.Scraper([f"{server.base_url}/metrics"])
    before = scraper.scrape()
    t0 = time.perf_counter()
    res = asyncio.run(send(server.base_url, prompt))
    res["wall_ms"] = 1000 * (time.perf_counter() - t0)
    time.sleep(2)  # stores finish asynchronously; let their counters land
    delta = metrics.delta(before, scraper.scrape())
    res["counters"] = {k: v for k, v in delta.items() if v and ("prefix_cache" in k or "kv_offload" in k
                                                                or "prefill_time" in k)}
    res.pop("output_token_ids", None)
    out["steps"][name] = res
    print(f"{name}: ttft {res['ttft_ms']} ms, error {res['error']}, counters {res['counters']}", flush=True)


def main(out_dir: str, model_dir: str | None = None) -> None:
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(Path("config.yaml").read_text())
    if model_dir is None:
        model_dir = "/root/models/llama-3.1-8b"
        t0 = time.perf_counter()
        make_model("llama-3.1-8b", cfg["models"]["llama-3.1-8b"], Path(model_dir))
        print(f"model folder made in {time.perf_counter() - t0:.0f} s", flush=True)
    store = Path("/root/offload-store")
    args = ["--enable-prefix-caching", "--prefix-caching-hash-algo", "sha256_cbor",
            "--load-format", "dummy", "--max-model-len", "16384", "--enforce-eager",
            "--gpu-memory-utilization", "0.85", "--enable-prompt-tokens-details",
            "--kv-transfer-config", kv_transfer(store)]
    env = {"PYTHONHASHSEED": "0"}
    pm = PromptMaker.for_model(Path(model_dir), 0)
    populate = pm.tokens("probe/populate", PREFIX_TOKENS)
    out = {"args": args, "steps": {}, "starts_s": []}
    for i in (1, 2):
        server = vllm_server(Path(model_dir), "llama", args, log_path=out_path / f"vllm-{i}.log", env=env,
                             startup_timeout_s=420, stop_timeout_s=60)
        server.start()
        out["starts_s"].append(round(server.startup_s, 1))
        print(f"vLLM start {i}: {server.startup_s:.0f} s", flush=True)
        try:
            step(out, f"warmup_{i}", server, pm.tokens(f"probe/warmup{i}", 256))
            if i == 1:
                step(out, "populate", server, populate)
                step(out, "same_again", server, populate)
                text = httpx.get(f"{server.base_url}/metrics").text
                out["kv_offload_metric_names"] = sorted({line.split("{")[0].split(" ")[0]
                                                         for line in text.splitlines()
                                                         if "kv_offload" in line and not line.startswith("#")})
            else:
                step(out, "post_restart_first", server, populate)
                step(out, "post_restart_never_seen", server, pm.tokens("probe/cold", PREFIX_TOKENS))
        finally:
            out.setdefault("stop_returncodes", []).append(server.stop())
        if i == 1:
            out["store_after_stop"] = store_listing(store)
            print(f"file tier after the stop: {out['store_after_stop']}", flush=True)
    (out_path / "probe.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
