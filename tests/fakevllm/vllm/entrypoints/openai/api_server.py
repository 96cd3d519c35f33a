"""A stand-in for vLLM's OpenAI server that fails on demand (tests only; standard library only).

It takes vLLM's flags (``--host``, ``--port``, ``--max-model-len``, ``--enable-prefix-caching``,
others ignored), starts an "engine" child process in its own process group as vLLM does, and
serves ``/health``, ``/metrics`` (vLLM's prefix-cache counters) and streaming
``/v1/completions`` (token ids in, token ids out, usage with cached tokens).

``FAKE_VLLM`` (comma-separated) chooses the fault:

    start_fail          exit 1 with an error before listening (the engine child is left behind)
    fail_if_arg=ARG     the same, only if ARG is among the flags
    never_healthy       /health answers 503 forever
    startup_s=S         seconds before listening (default 0.2)
    crash_at=N          the N-th completion request: one token, then SIGKILL to itself
    drop_at=N           the N-th completion request: one token, then the connection is cut
    hang_at=N           the N-th completion request: one token, then nothing, forever
    token_s=S           seconds between tokens (default 0.005)
    ignore_sigint       the server and its engine child ignore SIGINT (only SIGKILL ends them)
    no_engine           do not start the engine child

At start it writes its whole environment to its log, as a careless server might: tests use
that to prove that no secret reaches a server's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BLOCK = 16


def say(msg: str) -> None:
    print(f"FAKE-VLLM: {msg}", flush=True)


def parse_faults() -> dict[str, str]:
    out = {}
    for item in filter(None, os.environ.get("FAKE_VLLM", "").split(",")):
        k, _, v = item.partition("=")
        out[k.strip()] = v.strip()
    return out


FAULTS = parse_faults()


class State:
    def __init__(self, max_model_len: int, prefix_caching: bool):
        self.max_model_len = max_model_len
        self.prefix_caching = prefix_caching
        self.lock = threading.Lock()
        self.n_requests = 0
        self.seen: list[list[int]] = []
        self.queries = 0
        self.hits = 0

    def cached_tokens(self, prompt: list[int]) -> int:
        if not self.prefix_caching:
            return 0
        best = 0
        for p in self.seen:
            n = 0
            for a, b in zip(p, prompt):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return min(best, len(prompt) - 1) // BLOCK * BLOCK


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, fmt, *args):
        say(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}")

    def _send(self, code: int, body: str, ctype: str = "application/json") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/health":
            if "never_healthy" in FAULTS:
                return self._send(503, '{"error": "engine not ready"}')
            return self._send(200, "")
        if self.path == "/metrics":
            s = self.state
            lines = []
            for name, value in (("vllm:prefix_cache_queries", s.queries),
                                ("vllm:prefix_cache_hits", s.hits)):
                lines += [f"# HELP {name} {name}", f"# TYPE {name} counter",
                          f'{name}_total{{model_name="fake"}} {float(value)}']
            return self._send(200, "\n".join(lines) + "\n", "text/plain; version=0.0.4")
        return self._send(404, '{"error": "not found"}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/completions":
            return self._send(404, '{"error": "not found"}')
        s = self.state
        prompt = body.get("prompt")
        prompt = prompt if isinstance(prompt, list) else [ord(c) % 256 for c in str(prompt)]
        max_tokens = int(body.get("max_tokens", 16))
        if len(prompt) + max_tokens > s.max_model_len:
            msg = (f"This model's maximum context length is {s.max_model_len} tokens. However, you "
                   f"requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, "
                   f"{max_tokens} in the completion). Please reduce the length of the messages or completion.")
            return self._send(400, json.dumps({"error": {"message": msg, "type": "BadRequestError",
                                                         "code": 400}}))
        with s.lock:
            s.n_requests += 1
            n = s.n_requests
            cached = s.cached_tokens(prompt)
            s.queries += len(prompt)
            s.hits += cached
            s.seen.append(list(prompt))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        token_s = float(FAULTS.get("token_s", 0.005))
        time.sleep(0.002 * (len(prompt) - cached) / BLOCK)  # "prefill": cached tokens are free
        for i in range(max_tokens):
            tok = (sum(prompt) + 7 * i) % 1000 + 3
            chunk = {"choices": [{"index": 0, "text": f" t{tok}", "token_ids": [tok]}]}
            self._chunk(f"data: {json.dumps(chunk)}\n\n")
            if i == 0:
                if FAULTS.get("crash_at") == str(n):
                    say(f"request {n}: crashing (SIGKILL to myself)")
                    os.kill(os.getpid(), signal.SIGKILL)
                if FAULTS.get("drop_at") == str(n):
                    say(f"request {n}: dropping the connection")
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if FAULTS.get("hang_at") == str(n):
                    say(f"request {n}: hanging")
                    time.sleep(3600)
            time.sleep(token_s)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": max_tokens,
                 "total_tokens": len(prompt) + max_tokens,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        self._chunk(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n")
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def start_engine() -> subprocess.Popen:
    """A child in this process group, as vLLM's EngineCore is; it outlives a killed parent."""
    code = ("import signal, time\n"
            + ("signal.signal(signal.SIGINT, signal.SIG_IGN)\n" if "ignore_sigint" in FAULTS else "")
            + "time.sleep(3600)\n")
    return subprocess.Popen([sys.executable, "-c", code, "fake-vllm-engine"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fake-vllm")
    ap.add_argument("--model")
    ap.add_argument("--served-model-name")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--enable-prefix-caching", dest="prefix_caching", action="store_true", default=True)
    ap.add_argument("--no-enable-prefix-caching", dest="prefix_caching", action="store_false")
    args, rest = ap.parse_known_args(argv)
    flags = sys.argv[1:] if argv is None else argv
    say(f"pid {os.getpid()}, pgid {os.getpgid(0)}, flags {flags}, faults {FAULTS}")
    say("environment: " + " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())))
    if "ignore_sigint" in FAULTS:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    engine = None if "no_engine" in FAULTS else start_engine()
    time.sleep(float(FAULTS.get("startup_s", 0.2)))
    if "start_fail" in FAULTS or FAULTS.get("fail_if_arg", "\0") in flags:
        say("loading weights")
        print("Traceback (most recent call last):\n  File \"fake_vllm/engine.py\", line 1, in load\n"
              "RuntimeError: FAKE-VLLM start failure: not enough memory for the KV cache "
              "(asked for 2 GiB, 0 free)", flush=True)
        return 1
    Handler.state = State(args.max_model_len, args.prefix_caching)
    try:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
    except OSError as e:
        print(f"ERROR: [Errno {e.errno}] error while attempting to bind on address "
              f"({args.host!r}, {args.port}): {e.strerror}", flush=True)
        return 1
    server.daemon_threads = True
    say(f"listening on http://{args.host}:{args.port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        say("SIGINT: shutting down")
    finally:
        if engine is not None and engine.poll() is None:
            engine.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
