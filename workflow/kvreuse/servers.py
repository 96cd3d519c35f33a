"""The servers of one run and their lifetimes: named vLLM instances and an LMCache server.

:class:`Servers` starts them (the LMCache server first, when the arm's plan has one), stops
them gracefully (SIGINT to each process group, see :class:`kvreuse.server.ManagedProcess`),
restarts them, checks that they are alive (a dead one fails the job with its log tail), names
the URLs to scrape, and keeps the record of every start and stop for the meta (a vLLM stop
while an LMCache server runs also records the server's GPU memory just before and just after
it: ``lmcache_server_gpu_mib``). Used as a context manager, it stops whatever it started on
the way out, exception or not.

An arm with a remote store (Redis, LMCache's remote server: the plan's ``remote_store``,
kvreuse.remote_store) has it started before anything else, health-checked (Redis: PING), kept
running across vLLM's restarts and stopped by its process group with the rest, last.

Instances are named (``servers.vllm["main"]``), so a run may hold two vLLM servers at once;
today's experiments use one, :data:`MAIN`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import gpu_memory, platforms, remote_store, schema
from .errors import ServerError
from .gpu_share import MeasureLock
from .lmcache import flags as lmcache_flags
from .plan import ServerPlan
from .server import ManagedProcess, vllm_server

#: the instance today's experiments use
MAIN = "main"
LMCACHE_SERVER = "lmcache-server"
#: the variable that pins a vLLM instance to its GPUs
CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _no_check(wait_s: float = 0.0) -> None:
    pass


@dataclass(frozen=True)
class Target:
    """Where a phase sends its requests and reads its counters.

    ``scrape_urls`` must answer; a failure of one of ``optional_scrape_urls`` (LMCache's own
    metrics) is logged and skipped. ``check(wait_s)`` raises :class:`ServerError` with the log
    tail if a server behind the target has died (waiting up to ``wait_s`` for it to)."""

    base_url: str
    scrape_urls: tuple[str, ...]
    optional_scrape_urls: tuple[str, ...] = ()
    check: Callable[[float], None] = field(default=_no_check, compare=False)

    def required_only(self) -> "Target":
        """The same target without the optional scrape URLs."""
        return replace(self, optional_scrape_urls=())


def visible_devices(env: dict[str, str]) -> str | None:
    """The CUDA_VISIBLE_DEVICES a process started with ``env`` (over this process's
    environment) runs with; None where it is unset (every GPU of the node)."""
    return env.get(CUDA_DEVICES, os.environ.get(CUDA_DEVICES))


def process_label(name: str) -> str:
    """The process name in logs, errors and the meta: ``vllm`` for :data:`MAIN`, else ``vllm-<name>``."""
    return "vllm" if name == MAIN else f"vllm-{name}"


class Servers:
    """The running servers of one arm: ``vllm`` (by instance name) and ``lmcache_server``."""

    def __init__(self, plan: ServerPlan, *, model_dir: Path, model_name: str, log_dir: Path,
                 server: dict, lock: MeasureLock | None = None):
        self.plan = plan
        # held from the moment a server is ready until the last one has stopped, so that jobs
        # sharing a GPU never measure at once (kvreuse.gpu_share; a no-op without the runner's lock)
        self.lock = lock if lock is not None else MeasureLock()
        self.model_dir = model_dir
        self.model_name = model_name
        self.log_dir = Path(log_dir)
        self.startup_timeout_s = schema.get(server, "server", "startup_timeout_s")
        self.stop_timeout_s = schema.get(server, "server", "stop_timeout_s")
        self.vllm: dict[str, ManagedProcess] = {}
        self.connected: dict[str, bool] = {}  # an instance has the arm's KV connector (False: APC only)
        self.lmcache_server: ManagedProcess | None = None
        self.remote_store: ManagedProcess | None = None
        self.starts: list[dict] = []  # {process, at, startup_s[, connector]}
        # {process, at, returncode (-9: killed), members[, lmcache_server_gpu_mib]}
        self.stops: list[dict] = []
        self._stack = contextlib.ExitStack()

    # -- lifetimes -------------------------------------------------------------------------
    def __enter__(self) -> "Servers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process started, latest first (vLLM before the LMCache server), then let
        other jobs measure. Idempotent."""
        try:
            self._stack.close()
        finally:
            self.lock.release()

    def start(self, name: str = MAIN, *, connector: bool = True,
              devices: list[int] | None = None) -> ManagedProcess:
        """Start vLLM instance ``name`` (and the LMCache server first, if the plan has one and
        it is not running); ``connector=False``: APC only, no LMCache. ``devices``: the job's
        GPUs (indices) this instance alone gets, through CUDA_VISIBLE_DEVICES in its environment
        (kvreuse.platforms.instance_cuda_devices); None: the job's GPUs, as the job's environment
        has them. The LMCache server always keeps the job's environment: it must see every GPU
        an instance registers its KV cache from (profiles/gpu-node/notes/2026-11-29-lmcache-mp-cross-gpu.md)."""
        if name in self.vllm:
            raise ServerError(f"{process_label(name)} is already running; stop it before starting it again")
        args, env = self.plan.vllm_args, self.plan.env
        if not connector:
            args, env = lmcache_flags.apc_only(self.plan)
        if devices is not None:
            env = {**env, CUDA_DEVICES: self._pinned(name, devices)}
        if connector:
            if self.plan.remote_store and self.remote_store is None:
                self._start_remote_store()
            if self.plan.lmcache_server and self.lmcache_server is None:
                self._start_lmcache_server()
        label = process_label(name)
        proc = vllm_server(self.model_dir, self.model_name, args, log_path=self.log_dir / f"{label}.log",
                           env=env, startup_timeout_s=self.startup_timeout_s,
                           stop_timeout_s=self.stop_timeout_s)
        proc.name = label
        self._stack.callback(proc.stop)
        proc.start()
        self.vllm[name] = proc
        self.connected[name] = connector
        # the GPUs it ran on: the job's indices it was pinned to (None: all of the job's) and the
        # CUDA_VISIBLE_DEVICES it ran with (None: unset, every GPU of the node)
        self.starts.append({"process": label, "at": now_iso(), "connector": connector,
                            "startup_s": round(proc.startup_s, 3), "devices": devices,
                            "cuda_visible_devices": visible_devices(env)})
        self.lock.acquire()
        return proc

    @staticmethod
    def _pinned(name: str, devices: list[int]) -> str:
        """CUDA_VISIBLE_DEVICES of an instance pinned to the job's GPUs ``devices``."""
        try:
            return platforms.instance_cuda_devices(devices)
        except ValueError as e:
            raise ServerError(f"{process_label(name)} cannot be pinned to the job's GPUs {devices}: {e}. "
                              f"Nothing more was started; give the job more GPUs or change the "
                              f"experiment's instance_devices") from None

    def _start_remote_store(self) -> None:
        spec = self.plan.remote_store
        proc = remote_store.process(spec, log_path=self.log_dir / f"{spec['process']}.log", env=self.plan.env,
                                    startup_timeout_s=self.startup_timeout_s, stop_timeout_s=self.stop_timeout_s)
        self._stack.callback(proc.stop)
        remote_store.start_process(proc, spec)
        self.remote_store = proc
        self.starts.append({"process": spec["process"], "at": now_iso(), "startup_s": round(proc.startup_s, 3)})

    def _start_lmcache_server(self) -> None:
        spec = self.plan.lmcache_server
        env = {**self.plan.env, **spec.get("env", {})}  # the job's GPUs, all of them: never pinned
        proc = ManagedProcess(
            LMCACHE_SERVER, spec["argv"], health_url=spec["health_url"],
            log_path=self.log_dir / f"{LMCACHE_SERVER}.log", env=env,
            startup_timeout_s=self.startup_timeout_s, stop_timeout_s=self.stop_timeout_s)
        self._stack.callback(proc.stop)
        proc.start()
        self.lmcache_server = proc
        self.starts.append({"process": LMCACHE_SERVER, "at": now_iso(), "startup_s": round(proc.startup_s, 3),
                            "cuda_visible_devices": visible_devices(env)})

    def stop(self, *names: str, lmcache_server: bool = False) -> None:
        """Graceful stop of the vLLM instances ``names`` (none named: all), and of the LMCache
        server too with ``lmcache_server``; exit codes and how each member of the process
        group ended go to :attr:`stops`; with an LMCache server running, each vLLM stop's entry
        also has the server's GPU memory just before and just after it
        (``lmcache_server_gpu_mib``: {before, after} in MiB, None where nvidia-smi cannot tell)."""
        for name in names or list(self.vllm):
            proc = self.vllm.pop(name, None)
            self.connected.pop(name, None)
            if proc is not None and proc.proc is not None:
                before = self._lmcache_server_mib()
                entry = self._record_stop(proc.name, proc)
                if self._lmcache_server_running():
                    entry["lmcache_server_gpu_mib"] = {"before": before, "after": self._lmcache_server_mib()}
        if lmcache_server and self.lmcache_server is not None:
            self._record_stop(LMCACHE_SERVER, self.lmcache_server)
            self.lmcache_server = None
        if not self.vllm:
            self.lock.release()

    def _record_stop(self, process: str, proc: ManagedProcess) -> dict:
        rc = proc.stop()
        members = proc.last_stop.as_meta() if proc.last_stop is not None else []
        self.stops.append({"process": process, "at": now_iso(), "returncode": rc, "members": members})
        return self.stops[-1]

    def _lmcache_server_running(self) -> bool:
        return self.lmcache_server is not None and self.lmcache_server.proc is not None

    def _lmcache_server_mib(self) -> float | None:
        """The LMCache server's GPU memory now (MiB, its process group), None without one or
        where nvidia-smi cannot tell."""
        if not self._lmcache_server_running():
            return None
        return gpu_memory.group_mib(self.lmcache_server.proc.pid)  # its own group: pgid = pid

    def remote_store_rss_bytes(self) -> float | None:
        """The remote store's resident memory now (bytes: kvreuse.remote_store.rss_bytes), None
        without a running one: what it holds, since both keep their KV in their memory."""
        if self.remote_store is None or self.remote_store.proc is None:
            return None
        return remote_store.rss_bytes(self.remote_store.proc.pid)

    def restart(self, *names: str, lmcache_server: bool = False) -> None:
        """Graceful stop and a fresh start (with the connector); ``lmcache_server`` restarts the
        LMCache server too."""
        names = names or tuple(self.vllm)
        self.stop(*names, lmcache_server=lmcache_server)
        for name in names:
            self.start(name)

    # -- liveness and targets --------------------------------------------------------------
    def check(self, name: str | None = MAIN, wait_s: float = 0.0) -> None:
        """Fail the job (ServerError with the log tail) if a server has died: instance ``name``
        waited on up to ``wait_s``, the other instances and the LMCache server looked at."""
        for n, proc in self.vllm.items():
            proc.check_alive(wait_s=wait_s if n == name else 0.0)
        for proc in (self.lmcache_server, self.remote_store):
            if proc is not None:
                proc.check_alive()

    def scrape_urls(self, name: str = MAIN) -> tuple[str, ...]:
        """Counters that must answer: vLLM's and the LMCache server's."""
        urls = (f"{self._running(name).base_url}/metrics",)
        if self.lmcache_server is not None and self.plan.lmcache_server.get("metrics_url"):
            urls += (self.plan.lmcache_server["metrics_url"],)
        return urls

    def optional_scrape_urls(self, name: str = MAIN) -> tuple[str, ...]:
        """LMCache's own metrics (in-process server, LMCache server): a failure to answer is
        logged, not fatal; the hit verdict rests on vLLM's counters."""
        if self.plan.lmcache is None or not self.connected.get(name):
            return ()
        urls = tuple(self.plan.lmcache.get("metrics_urls", ()))
        if self.lmcache_server is not None and self.plan.lmcache_server.get("metrics_url"):
            urls += (self.plan.lmcache_server["metrics_url"],)
        return urls

    def target(self, name: str = MAIN) -> Target:
        """Instance ``name`` as it runs now (a restart gives it a new port: ask again after one)."""
        return Target(self._running(name).base_url, self.scrape_urls(name), self.optional_scrape_urls(name),
                      check=lambda wait_s=0.0: self.check(name, wait_s))

    def _running(self, name: str) -> ManagedProcess:
        try:
            return self.vllm[name]
        except KeyError:
            running = ", ".join(self.vllm) or "none"
            raise ServerError(f"{process_label(name)} is not running (running instances: {running}); "
                              f"start it with Servers.start({name!r}) first") from None
