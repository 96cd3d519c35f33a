"""The remote stores an LMCache arm's ``remote_url`` points at, started and stopped by the run.

- ``redis``: Debian's ``redis-server`` (``server.redis_server``: its path, default the one on
  PATH), on 127.0.0.1 on a free port, its data folder and dump file in the run's store folder
  and no persistence (``--save ""``, ``--appendonly no``: the store lives as long as the run's
  Redis, which outlives vLLM's restarts). Ready when it answers PING with PONG.
- ``lm_server``: LMCache's own remote server, ``python -m lmcache.v1.server HOST PORT cpu``
  (lmcache 0.5.3: v1/server/__main__.py, a plain TCP server keeping KV in its memory; vLLM's
  LMCache reaches it through ``remote_url: lm://HOST:PORT``, v1/storage_backend/connector/
  lm_adapter.py). Ready when it accepts a TCP connection.

:func:`spec` gives the process to start (argv, ``tcp://`` health URL, the probe, the version);
:func:`process` makes the :class:`~kvreuse.server.ManagedProcess`, which runs it in its own
process group and ends that group on stop, failure or signal, as with vLLM.

Before vLLM stops, what LMCache still writes to the store must land: LMCache writes to a remote
store in the background and does not wait for those writes when vLLM stops (lmcache 0.5.3:
``RemoteBackend.close`` closes the connection, v1/storage_backend/remote_backend.py;
``StorageManager.close``). :func:`settled_puts` waits until LMCache's own gauge of writes in
flight reads zero; :func:`settled_keys` (Redis) until the key count stops changing.
:func:`check_reached` fails a run whose LMCache never reached its store (LMCache only logs a
warning and then runs without it, so every "hit" would be a miss).
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from . import schema
from .errors import ServerError
from .logtail import log_since, log_size  # noqa: F401  (log_size: the experiment marks vLLM's log with it)
from .server import HOST, ManagedProcess

REDIS, LM_SERVER = "redis", "lm_server"
#: the LMCache stores that are a server of their own, started by the run (lmcache.settings)
KINDS = (REDIS, LM_SERVER)
#: the ``remote_url`` scheme of each (lmcache 0.5.3: v1/storage_backend/connector/
#: redis_adapter.py ``redis://``, lm_adapter.py ``lm://``)
SCHEMES = {REDIS: "redis", LM_SERVER: "lm"}
#: the redis-server to run when the config names none (the schema's default: the one on PATH)
REDIS_DEFAULT = schema.default("server", "redis_server")
#: what the process is called in logs, errors and the meta's starts and stops
PROCESS = {REDIS: "redis", LM_SERVER: "lmcache-remote-server"}
#: how to get redis-server where it is missing (README, envs/)
#: LMCache's gauge of the writes to its remote store still in flight (lmcache 0.5.3:
#: observability.py, set from ``RemoteBackend.put_tasks``, v1/storage_backend/remote_backend.py);
#: served by its internal API server at the arm's LMCache metrics URL, read at scrape time
PUT_TASKS_GAUGE = "lmcache:remote_put_task_num"
#: what LMCache logs (a warning, not an error) when it cannot reach its remote store; it then runs
#: without it (lmcache 0.5.3: RemoteBackend.init_connection)
UNREACHED_LOG = "Failed to initialize/re-establish remote connection"
log = logging.getLogger(__name__)
REDIS_HOWTO = ("install it (Debian/Ubuntu: `apt-get install redis-server`; envs/install-cpu.sh does "
               "so as root; an offline GPU host: envs/gpu-host-redis.sh) or set server.redis_server "
               "to its path")


def redis_binary(configured: str) -> str:
    """The redis-server to run: ``configured`` (a path, or a name looked up on PATH); a
    ServerError saying what to do when there is none (nothing is started)."""
    found = shutil.which(configured)
    if found is None:
        raise ServerError(f"redis: {configured!r} not found (server.redis_server; PATH checked): "
                          f"{REDIS_HOWTO} (nothing was started)")
    return found


def redis_version(binary: str) -> str | None:
    """``redis-server --version``'s version (``7.0.15``), None where it does not say."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip() or None


def redis_argv(binary: str, port: int, data_dir: Path) -> list[str]:
    """redis-server on 127.0.0.1 only, in the foreground, logging to stdout (the run's log),
    its data in ``data_dir`` and nothing persisted."""
    return [binary, "--bind", HOST, "--port", str(port), "--protected-mode", "yes",
            "--daemonize", "no", "--logfile", "", "--dir", str(data_dir),
            "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"]


def lm_server_argv(port: int) -> list[str]:
    """LMCache's remote server (lmcache 0.5.3: v1/server/__main__.py: HOST PORT [cpu])."""
    return [sys.executable, "-m", "lmcache.v1.server", HOST, str(port), "cpu"]


def redis_ping(port: int, timeout_s: float, host: str = HOST) -> bool:
    """Whether a Redis on ``host:port`` answers PING with PONG now (RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_keys(port: int, timeout_s: float = 5.0, host: str = HOST) -> int | None:
    """How many keys a Redis on ``host:port`` holds now (DBSIZE), None where it does not answer."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(b"*1\r\n$6\r\nDBSIZE\r\n")
            reply = s.recv(64)
    except OSError:
        return None
    return int(reply[1:].split(b"\r\n")[0]) if reply.startswith(b":") else None


def settled_keys(s: dict, *, poll_s: float = 1.0, limit_s: float = 120.0,
                 sleep=None, clock=time.monotonic) -> int | None:
    """For a Redis store: wait until its key count stops changing between two polls ``poll_s``
    apart (LMCache writes to a remote store in the background, so a stop right after the last
    request could cut writes short), at most ``limit_s``; returns the count. None for a store
    that cannot be asked (lm_server) or a Redis that does not answer."""
    if s["kind"] != REDIS:
        return None
    sleep = sleep or time.sleep  # (looked up now: a test may replace it)
    last, deadline = redis_keys(s["port"]), clock() + limit_s
    while last is not None and clock() < deadline:
        sleep(poll_s)
        now = redis_keys(s["port"])
        if now == last:
            return now
        last = now
    return last


def put_tasks(metrics_url: str, timeout_s: float = 5.0) -> float | None:
    """LMCache's remote writes in flight now (:data:`PUT_TASKS_GAUGE`, summed over its label
    sets), None where the URL does not answer or has no such gauge."""
    try:
        r = httpx.get(metrics_url, timeout=timeout_s)
        r.raise_for_status()
    except httpx.HTTPError:
        return None
    return put_tasks_in(r.text)


def put_tasks_in(text: str) -> float | None:
    """:data:`PUT_TASKS_GAUGE` in Prometheus exposition ``text`` (summed over label sets), None
    where it is absent."""
    values = [s.value for fam in text_string_to_metric_families(text) if fam.name == PUT_TASKS_GAUGE
              for s in fam.samples]
    return float(sum(values)) if values else None


def settled_puts(metrics_urls: Sequence[str], *, poll_s: float = 0.5, limit_s: float = 120.0,
                 read: Callable[[str], float | None] | None = None, sleep=None,
                 clock=time.monotonic) -> float | None:
    """Wait until LMCache's writes to its remote store in flight read zero twice ``poll_s``
    apart (LMCache does not wait for them when vLLM stops), at most ``limit_s``; returns the last
    reading: 0.0 when settled, more when the limit came first, None where no URL of
    ``metrics_urls`` (the arm's LMCache metrics) serves the gauge (then nothing is waited for)."""
    read, sleep = read or put_tasks, sleep or time.sleep  # (looked up now: a test may replace them)
    url = next((u for u in metrics_urls if read(u) is not None), None)
    if url is None:
        log.warning("LMCache's %s could not be read from %s: not waiting for its remote writes",
                    PUT_TASKS_GAUGE, ", ".join(metrics_urls) or "no metrics URL")
        return None
    zeros, last, deadline = 0, None, clock() + limit_s
    while True:
        last = read(url)
        zeros = zeros + 1 if last == 0 else 0
        if zeros >= 2 or clock() >= deadline:
            break
        sleep(poll_s)
    if zeros < 2:
        log.warning("LMCache still had %s remote writes in flight after %.0f s", last, limit_s)
    return last


def rss_bytes(pid: int) -> float | None:
    """A process's resident memory now (bytes, ``VmRSS`` of /proc/<pid>/status), None where it
    cannot be read (gone, or not Linux). Both remote stores keep their KV in their own memory
    (Redis without persistence; LMCache's server with ``cpu``), so its growth over the populated
    prompts is what the store received, by the store's side rather than LMCache's."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


#: what LMCache logs when the scheduler's lookup RPC to its worker outlasts ``lookup_timeout_ms``
#: (lmcache 0.5.3: v1/rpc/zmq_transport.py); the lookup then reports no hit, so the request is
#: recomputed although the store may hold its KV
LOOKUP_TIMEOUT_LOG = "Timeout occurred for rank"


def lookup_timeouts(vllm_log: Path, since: int = 0) -> int | None:
    """How many of LMCache's lookups timed out (:data:`LOOKUP_TIMEOUT_LOG`) in vLLM's log from
    byte ``since`` on; None where the log cannot be read."""
    text = log_since(vllm_log, since)
    return None if text is None else text.count(LOOKUP_TIMEOUT_LOG)


def check_reached(s: dict, keys: int | None, vllm_log: Path, since: int = 0) -> None:
    """Fail the run (ServerError saying what to check) where LMCache did not reach its remote
    store ``s``: a Redis that holds no key after the populated prompts, or vLLM's log (from byte
    ``since``: this run's part, the log is appended to across runs) with LMCache's
    :data:`UNREACHED_LOG` warning. Measuring on would record every "hit" as a miss."""
    problem = None
    if s["kind"] == REDIS and keys == 0:
        problem = f"the Redis on port {s['port']} holds no key after the populated prompts"
    elif UNREACHED_LOG in (log_since(vllm_log, since) or ""):
        problem = f"{vllm_log} says LMCache could not reach it ({UNREACHED_LOG!r})"
    if problem:
        raise ServerError(f"{PROCESS[s['kind']]}: LMCache did not store into its remote store {s['url']}: "
                          f"{problem}. Nothing after the restart could come from the store, so the run "
                          f"stops here. What to check: the lines of {vllm_log} around 'remote' (LMCache's "
                          f"connection to remote_url) and the store's own log beside it")


def tcp_accepts(port: int, timeout_s: float, host: str = HOST) -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def spec_url(kind: str, port: int) -> str:
    """LMCache's ``remote_url`` for a store of ``kind`` on 127.0.0.1:``port``."""
    return f"{SCHEMES[kind]}://{HOST}:{port}"


def spec(kind: str, port: int, store_dir: Path, redis_server: str = REDIS_DEFAULT) -> dict:
    """What to start for a remote store of ``kind`` on ``port``: ``kind``, ``process``,
    ``argv``, ``port``, ``url`` (LMCache's ``remote_url``), ``health_url``, ``data_dir``,
    ``version``. ``redis_server``: the binary (server.redis_server), found on PATH here; a
    missing one is a ServerError at :func:`start_process`, before any process starts."""
    if kind not in KINDS:
        raise ValueError(f"unknown remote store {kind!r} (allowed: {', '.join(KINDS)})")
    out = {"kind": kind, "process": PROCESS[kind], "port": port, "url": spec_url(kind, port),
           "health_url": f"tcp://{HOST}:{port}"}
    if kind == REDIS:
        binary = shutil.which(redis_server) or redis_server
        data_dir = Path(store_dir).absolute() / "redis"
        return out | {"argv": redis_argv(binary, port, data_dir), "data_dir": str(data_dir),
                      "version": redis_version(binary) if shutil.which(binary) else None}
    return out | {"argv": lm_server_argv(port), "data_dir": None, "version": None}


def process(s: dict, *, log_path: Path, env: dict, startup_timeout_s: float,
            stop_timeout_s: float) -> ManagedProcess:
    """The managed process of a remote store ``spec``; its data folder is made first."""
    if s["data_dir"]:
        Path(s["data_dir"]).mkdir(parents=True, exist_ok=True)
    port = s["port"]
    probe = (lambda t: redis_ping(port, t)) if s["kind"] == REDIS else (lambda t: tcp_accepts(port, t))
    return ManagedProcess(s["process"], s["argv"], health_url=s["health_url"], log_path=log_path,
                          env=env, startup_timeout_s=startup_timeout_s, stop_timeout_s=stop_timeout_s,
                          probe=probe)


def start_process(proc: ManagedProcess, s: dict) -> ManagedProcess:
    """Start ``proc`` (made by :func:`process` from ``s``) and wait until it answers; on failure
    nothing is left running and the ServerError says what went wrong (the log's tail) and what
    to do."""
    if s["kind"] == REDIS:
        redis_binary(s["argv"][0])  # ServerError saying how to get it; nothing started
    try:
        return proc.start()
    except ServerError as e:
        hint = (f"check that {s['argv'][0]} starts by hand on a free port with this data folder "
                f"(its log above says why it did not), or {REDIS_HOWTO}" if s["kind"] == REDIS
                else "check that `python -m lmcache.v1.server` runs in this environment (LMCache installed)")
        raise ServerError(f"{e}\nWhat to do: {hint}") from e


def start(s: dict, **kw) -> ManagedProcess:
    """:func:`process` and :func:`start_process` in one (``kw``: process's)."""
    return start_process(process(s, **kw), s)
