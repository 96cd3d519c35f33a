"""vLLM's own load generator (``vllm bench serve``) as a phase.

:class:`BenchServe` runs ``python -m kvreuse.bench_serve`` (see :mod:`kvreuse.bench_serve`)
against a :class:`kvreuse.servers.Target` at one request rate; its per-request TTFTs and ITLs
become records (source ``vllm_bench_serve``), its summary goes into the phase
(``Phase.bench_summary``), beside the counters the :class:`kvreuse.recorder.Recorder` reads
around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import redact
from .recorder import Recorder
from .server import log_tail
from .servers import Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Load:
    """One run of the load generator at a request rate: random prompts of fixed sizes
    (``dataset`` random), vLLM's prefix-repetition prompts (``prefix_repetition``:
    ``num_prefixes`` prefixes of ``input_len`` tokens, each followed by
    ``num_prompts // num_prefixes`` suffixes of ``suffix_len`` tokens, shuffled) or the first
    turns of a ShareGPT-format file (``sharegpt``, ``dataset_path``)."""

    request_rate: float | str  # requests per second, or "inf": all at once
    num_prompts: int
    input_len: int             # random: the prompt; prefix_repetition: the shared prefix
    output_len: int
    max_concurrency: int | None = None
    dataset: str = "random"
    suffix_len: int | None = None     # prefix_repetition
    num_prefixes: int | None = None   # prefix_repetition
    dataset_path: Path | None = None  # sharegpt

    def dataset_args(self) -> list[str]:
        """``vllm bench serve``'s flags for the dataset (names as in vLLM 0.26.0 and 0.32's
        ``vllm/benchmarks/datasets/datasets.py``)."""
        if self.dataset == "random":
            return ["--dataset-name", "random", "--random-input-len", str(self.input_len),
                    "--random-output-len", str(self.output_len), "--random-range-ratio", "0"]
        if self.dataset == "prefix_repetition":
            if not (self.suffix_len and self.num_prefixes):
                raise ValueError("a prefix_repetition load needs suffix_len and num_prefixes")
            return ["--dataset-name", "prefix_repetition",
                    "--prefix-repetition-prefix-len", str(self.input_len),
                    "--prefix-repetition-suffix-len", str(self.suffix_len),
                    "--prefix-repetition-num-prefixes", str(self.num_prefixes),
                    "--prefix-repetition-output-len", str(self.output_len)]
        if self.dataset == "sharegpt":
            if self.dataset_path is None:
                raise ValueError("a sharegpt load needs dataset_path (a ShareGPT-format JSON file)")
            return ["--dataset-name", "sharegpt", "--dataset-path", str(self.dataset_path),
                    "--sharegpt-output-len", str(self.output_len)]
        raise ValueError(f"load dataset {self.dataset!r} (allowed: random, prefix_repetition, sharegpt)")


class BenchServe:
    """Runs ``vllm bench serve`` as phases of ``recorder``; its output goes to ``log_dir``."""

    def __init__(self, recorder: Recorder, *, tokenizer: Path, log_dir: Path, seed: int = 0):
        self.recorder = recorder
        self.tokenizer = tokenizer
        self.log_dir = Path(log_dir)
        self.seed = seed

    def argv(self, target: Target, load: Load, out_dir: Path) -> list[str]:
        settings = self.recorder.settings
        # --temperature: vLLM 0.26.0's bench serve no longer sends temperature 0 by default (the
        # server's default then applies: vllm/benchmarks/serve.py, "no longer sets
        # temperature==0"); send the client's, as every request of kvreuse's own client does
        argv = [sys.executable, "-m", "kvreuse.bench_serve", "--backend", "openai",
                "--base-url", target.base_url, "--endpoint", "/v1/completions",
                "--model", settings.model, "--tokenizer", str(self.tokenizer),
                *load.dataset_args(),
                "--num-prompts", str(load.num_prompts), "--request-rate", str(load.request_rate),
                "--seed", str(self.seed), "--temperature", str(settings.temperature),
                "--ignore-eos", "--disable-tqdm",
                "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
                "--save-result", "--save-detailed", "--result-dir", str(out_dir),
                "--result-filename", "result.json"]
        if load.max_concurrency:
            argv += ["--max-concurrency", str(load.max_concurrency)]
        return argv

    async def phase(self, target: Target, kind: str, load: Load, *, name: str | None = None) -> dict:
        """One run as phase ``name`` of ``kind`` (``rate`` or ``fidelity_bench``); returns the summary.

        Counters come from the required scrape URLs only (vLLM's, the LMCache server's), and
        LMCache's log is not read for these phases."""
        async with self.recorder.measure(target.required_only(), kind, name=name, lmcache_log=False,
                                         request_rate=load.request_rate,
                                         max_concurrency=load.max_concurrency) as run:
            res = await self._bench(target, load)
            for i, ttft in enumerate(res.get("ttfts", [])):
                itl = [x * 1000 for x in res["itls"][i]]
                err = res["errors"][i] or None
                run.record(i, source="vllm_bench_serve", prompt_tokens=res["input_lens"][i],
                           cached_tokens=None, output_tokens=res["output_lens"][i],
                           ttft_ms=ttft * 1000 if not err else None, itl_ms=itl,
                           e2e_ms=(ttft * 1000 + sum(itl)) if not err else None,  # derived: TTFT + ITLs
                           error=err)
            run.n_requests = load.num_prompts
            run.bench_summary = summary = {k: v for k, v in res.items() if not isinstance(v, list)}
        m = self.recorder.meta
        log.info("%s/%s: bench serve rate %s: median TTFT %.1f ms, median ITL %.2f ms, %.1f output tok/s",
                 m.experiment, run.name, load.request_rate, summary.get("median_ttft_ms", float("nan")),
                 summary.get("median_itl_ms", float("nan")), summary.get("output_throughput", float("nan")))
        return summary

    async def _bench(self, target: Target, load: Load) -> dict:
        """Run the load generator in its own process group; its full result file."""
        out_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=self.log_dir))
        bench_log = self.log_dir / "bench_serve.log"
        with open(bench_log, "ab") as logf:
            proc = await asyncio.create_subprocess_exec(*self.argv(target, load, out_dir), stdout=logf,
                                                        stderr=logf, start_new_session=True,
                                                        env=redact.server_environ())
            try:
                rc = await proc.wait()
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
        if rc != 0:
            target.check(1.0)  # the server's death is the cause, if it died
            raise RuntimeError(f"vllm bench serve failed (exit {rc}).\nLast lines of {bench_log}:\n"
                               f"{log_tail(bench_log)}")
        return json.loads((out_dir / "result.json").read_text())
