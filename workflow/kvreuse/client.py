"""Streaming client: TTFT at the first streamed token chunk, measured here with perf_counter.

Modelled on vLLM's ``benchmarks/serve.py``: one small request loop, metrics with units in
their names, failures recorded with their error text instead of raised.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field

import httpx


@dataclass
class RequestResult:
    """One request as the client saw it. Times in milliseconds."""

    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    e2e_ms: float | None = None
    output_text: str = ""
    output_token_ids: list[int] = field(default_factory=list)
    error: str | None = None
    http_status: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def completion_payload(model: str, prompt, max_tokens: int, *, temperature: float = 0.0,
                       seed: int | None = 0) -> dict:
    """An OpenAI completions body: fixed output length (``ignore_eos``), usage in the stream."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        "skip_special_tokens": False,
        "return_token_ids": True,
    }
    if seed is not None:
        body["seed"] = seed
    return body


async def stream_completion(client: httpx.AsyncClient, base_url: str, payload: dict,
                            timeout_s: float) -> RequestResult:
    """Send one streaming request; never raises for request-level failures.

    ``timeout_s`` bounds the whole request (connect to last token), not only the gap between
    two chunks: a server that trickles tokens cannot hold a job past it.
    """
    res = RequestResult()
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(_stream(client, base_url, payload, res, t0, timeout_s), timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException) as e:
        res.error = f"timeout after {timeout_s:g} s ({type(e).__name__})"
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}"
    except json.JSONDecodeError as e:
        res.error = f"malformed stream chunk: {e}"
    return res


async def _stream(client: httpx.AsyncClient, base_url: str, payload: dict, res: RequestResult,
                  t0: float, timeout_s: float) -> None:
    text_parts: list[str] = []
    last = t0
    done = False
    # httpx's own per-read timeout (the client's default is 5 s) must not cut a long prefill
    # short: the whole request is bounded by wait_for above
    async with client.stream("POST", f"{base_url}/v1/completions", json=payload,
                             timeout=timeout_s) as resp:
        res.http_status = resp.status_code
        if resp.status_code != 200:
            body = (await resp.aread()).decode(errors="replace")
            res.error = f"HTTP {resp.status_code}: {_error_message(body)}"
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:  # vLLM reports mid-stream failures as a data event
                res.error = f"stream error: {_error_message(json.dumps(chunk))}"
                return
            now = time.perf_counter()
            choices = chunk.get("choices") or []
            if choices:  # a content chunk: one or more new tokens
                if res.ttft_ms is None:
                    res.ttft_ms = (now - t0) * 1000
                else:
                    res.itl_ms.append((now - last) * 1000)
                last = now
                text_parts.append(choices[0].get("text") or "")
                res.output_token_ids.extend(choices[0].get("token_ids") or [])
            usage = chunk.get("usage")
            if usage:
                res.prompt_tokens = usage.get("prompt_tokens")
                res.output_tokens = usage.get("completion_tokens")
                details = usage.get("prompt_tokens_details") or {}
                res.cached_tokens = details.get("cached_tokens")
    res.e2e_ms = (time.perf_counter() - t0) * 1000
    res.output_text = "".join(text_parts)
    if res.ttft_ms is None:
        res.error = "stream ended without any token"
    elif not done:  # a close-delimited body cut short reads as a clean end
        res.error = "stream ended before [DONE] (connection dropped?)"


def _error_message(body: str) -> str:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return body.strip()[:500]
    err = obj.get("error", obj)
    if isinstance(err, dict):
        return str(err.get("message", err))[:500]
    return str(err)[:500]
