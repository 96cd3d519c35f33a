"""A minimal OpenAI-style streaming server with known timings, for testing the client.

Run as a script: ``python sse_server.py PORT``. Behaviour per request body:
- default: waits ``first_delay_ms`` (from the prompt's first element) before the first chunk,
  then ``gap_ms`` between chunks, ``n`` chunks, then a usage chunk and [DONE];
- ``prompt == "too-long"``: HTTP 400 with vLLM's error body;
- ``prompt == "hang"``: never answers;
- ``prompt == "drop"``: sends one chunk, then closes the connection.

``GET /metrics`` serves Prometheus text with vLLM's prefix-cache counters: each default request
adds its prompt length to ``vllm:prefix_cache_queries`` and its cached tokens (16) to
``vllm:prefix_cache_hits``.
"""

import asyncio
import json
import sys

from aiohttp import web

CACHED_TOKENS = 16
COUNTERS = {"vllm:prefix_cache_queries": 0, "vllm:prefix_cache_hits": 0}


async def completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    prompt = body["prompt"]
    if prompt == "too-long":
        return web.json_response({"error": {"message": "This model's maximum context length is 64 tokens.",
                                            "type": "BadRequestError", "code": 400}}, status=400)
    if prompt == "hang":
        await asyncio.sleep(3600)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def send(obj):
        await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

    if prompt == "drop":
        await send({"choices": [{"index": 0, "text": "a", "token_ids": [5]}]})
        request.transport.close()
        return resp
    first_ms, gap_ms, n = prompt[0], prompt[1], prompt[2]
    await asyncio.sleep(first_ms / 1000)
    for i in range(n):
        if i:
            await asyncio.sleep(gap_ms / 1000)
        await send({"choices": [{"index": 0, "text": f"t{i} ", "token_ids": [100 + i]}]})
    await send({"choices": [], "usage": {"prompt_tokens": len(prompt), "completion_tokens": n,
                                         "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS}}})
    COUNTERS["vllm:prefix_cache_queries"] += len(prompt)
    COUNTERS["vllm:prefix_cache_hits"] += CACHED_TOKENS
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def health(request):
    return web.Response(text="ok")


async def metrics(request):
    lines = []
    for name, value in COUNTERS.items():
        # as prometheus_client writes a counter: the family's TYPE line names its _total sample
        lines += [f"# HELP {name}_total {name}", f"# TYPE {name}_total counter", f"{name}_total {float(value)}"]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def main():
    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
