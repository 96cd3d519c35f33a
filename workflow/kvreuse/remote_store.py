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
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import schema
from .errors import ServerError
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
                 sleep=time.sleep, clock=time.monotonic) -> int | None:
    """For a Redis store: wait until its key count stops changing between two polls ``poll_s``
    apart (LMCache writes to a remote store in the background, so a stop right after the last
    request could cut writes short), at most ``limit_s``; returns the count. None for a store
    that cannot be asked (lm_server) or a Redis that does not answer."""
    if s["kind"] != REDIS:
        return None
    last, deadline = redis_keys(s["port"]), clock() + limit_s
    while last is not None and clock() < deadline:
        sleep(poll_s)
        now = redis_keys(s["port"])
        if now == last:
            return now
        last = now
    return last


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
