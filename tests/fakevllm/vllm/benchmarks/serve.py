"""Stand-in for ``vllm bench serve`` (tests only): sequential streaming requests, vLLM's result keys.

Takes the flags kvreuse passes (others are accepted and ignored); random prompts of
``--random-input-len`` token ids; writes ``--result-dir/--result-filename`` with the per-request
lists (``ttfts``, ``itls``, ``errors``, ``input_lens``, ``output_lens``) and a summary.
``FAKE_VLLM_BENCH=fail`` makes it exit 1 after a recognisable error line.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import httpx


def add_cli_args(parser) -> None:
    for flag in ("--backend", "--base-url", "--endpoint", "--model", "--tokenizer", "--dataset-name",
                 "--request-rate", "--percentile-metrics", "--metric-percentiles", "--result-dir",
                 "--result-filename"):
        parser.add_argument(flag)
    for flag in ("--random-input-len", "--random-output-len", "--num-prompts", "--seed",
                 "--max-concurrency"):
        parser.add_argument(flag, type=int, default=None)
    parser.add_argument("--random-range-ratio", type=float, default=0.0)
    parser.add_argument("--temperature", type=float, default=None)
    for flag in ("--ignore-eos", "--disable-tqdm", "--save-result", "--save-detailed"):
        parser.add_argument(flag, action="store_true")


def _one(client: httpx.Client, url: str, model: str, prompt: list[int], out_len: int):
    body = {"model": model, "prompt": prompt, "max_tokens": out_len, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, last, itl, n = None, t0, [], 0
    with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            return None, [], f"HTTP {r.status_code}", 0
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("choices"):
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - t0
                else:
                    itl.append(now - last)
                last, n = now, n + 1
    return ttft, itl, "", n


def main(args) -> dict:
    if os.environ.get("FAKE_VLLM_BENCH") == "fail":
        print("FAKE-VLLM-BENCH: RuntimeError: benchmark client failed on purpose", flush=True)
        sys.exit(1)
    rng = random.Random(args.seed or 0)
    url = f"{args.base_url}{args.endpoint}"
    res = {"ttfts": [], "itls": [], "errors": [], "input_lens": [], "output_lens": []}
    t0 = time.perf_counter()
    with httpx.Client(timeout=60) as client:
        for _ in range(args.num_prompts):
            prompt = [rng.randrange(3, 1000) for _ in range(args.random_input_len)]
            ttft, itl, err, n = _one(client, url, args.model, prompt, args.random_output_len)
            res["ttfts"].append(ttft or 0.0)
            res["itls"].append(itl)
            res["errors"].append(err)
            res["input_lens"].append(len(prompt))
            res["output_lens"].append(n)
    dur = time.perf_counter() - t0
    ok = [t for t, e in zip(res["ttfts"], res["errors"]) if not e]
    itls = [x for xs in res["itls"] for x in xs]
    res.update(completed=len(ok), failed=len(res["errors"]) - len(ok), duration=dur,
               median_ttft_ms=1000 * statistics.median(ok) if ok else None,
               p99_ttft_ms=1000 * max(ok) if ok else None,
               median_itl_ms=1000 * statistics.median(itls) if itls else None,
               median_tpot_ms=1000 * statistics.median(itls) if itls else None,
               output_throughput=sum(res["output_lens"]) / dur if dur else None,
               request_throughput=len(ok) / dur if dur else None)
    out = Path(args.result_dir) / args.result_filename
    out.write_text(json.dumps(res))
    return res
