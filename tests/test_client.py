"""The streaming client against a local server with known timings."""

import asyncio

import httpx

from kvreuse.client import completion_payload, stream_completion


def call(base_url, prompt, timeout_s=30.0):
    async def go():
        async with httpx.AsyncClient() as client:
            return await stream_completion(client, base_url, completion_payload("m", prompt, 4), timeout_s)
    return asyncio.run(go())


def test_ttft_itl_e2e_match_the_server_timing(sse_server):
    r = call(sse_server, [300, 50, 5])
    assert r.error is None
    assert 300 <= r.ttft_ms < 300 + 150
    assert len(r.itl_ms) == 4
    assert all(45 <= x < 50 + 100 for x in r.itl_ms)
    assert r.e2e_ms >= r.ttft_ms + sum(r.itl_ms) - 1
    assert r.output_tokens == 5 and r.prompt_tokens == 3 and r.cached_tokens == 16
    assert r.output_token_ids == [100, 101, 102, 103, 104]
    assert r.output_text == "t0 t1 t2 t3 t4 "


def test_http_error_is_recorded_not_raised(sse_server):
    r = call(sse_server, "too-long")
    assert r.http_status == 400
    assert r.ttft_ms is None
    assert "maximum context length" in r.error


def test_timeout_is_recorded(sse_server):
    r = call(sse_server, "hang", timeout_s=1.0)
    assert r.error.startswith("timeout")


def test_dropped_connection_is_recorded(sse_server):
    r = call(sse_server, "drop")
    assert r.error is not None


def test_payload_fixes_output_length():
    p = completion_payload("m", [1, 2, 3], 16)
    assert p["ignore_eos"] is True and p["max_tokens"] == 16 and p["stream"] is True
    assert p["stream_options"] == {"include_usage": True}
