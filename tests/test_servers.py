"""The servers of a run on the stand-in vLLM (tests/fakevllm): named instances side by side,
graceful stops and restarts recorded, liveness, targets, and nothing left after the block."""

import os
import signal

import httpx
import pytest

import faultkit as fk
from kvreuse.plan import ServerPlan
from kvreuse.server import ServerError
from kvreuse.servers import MAIN, Servers


@pytest.fixture
def marker() -> str:
    return fk.new_marker()


def servers(tmp_path, marker) -> Servers:
    plan = ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)})
    return Servers(plan, model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                   server={"startup_timeout_s": 30, "stop_timeout_s": 10})


def test_two_instances_at_once_each_stopped_and_recorded(tmp_path, marker):
    with servers(tmp_path, marker) as srv:
        srv.start("a")
        srv.start("b")
        ta, tb = srv.target("a"), srv.target("b")
        assert ta.base_url != tb.base_url and ta.scrape_urls == (f"{ta.base_url}/metrics",)
        assert ta.optional_scrape_urls == ()  # no LMCache in this plan
        for t in (ta, tb):
            assert httpx.get(f"{t.base_url}/health").status_code == 200
        srv.check()
        assert [(s["process"], s["connector"]) for s in srv.starts] == [("vllm-a", True), ("vllm-b", True)]
        assert (tmp_path / "logs/vllm-a.log").exists() and (tmp_path / "logs/vllm-b.log").exists()
        srv.stop("a")
        assert list(srv.vllm) == ["b"] and [s["process"] for s in srv.stops] == ["vllm-a"]
        assert srv.stops[0]["returncode"] is not None
        with pytest.raises(ServerError, match=r"vllm-a is not running \(running instances: b\); start it"):
            srv.target("a")
        assert httpx.get(f"{tb.base_url}/health").status_code == 200  # the other one still serves
    fk.assert_none_left(marker)  # leaving the block stopped b


def test_restart_gives_a_fresh_server_and_records_both_ends(tmp_path, marker):
    with servers(tmp_path, marker) as srv:
        srv.start()
        with pytest.raises(ServerError, match="vllm is already running; stop it before starting it again"):
            srv.start()
        before = srv.vllm[MAIN].proc.pid
        srv.restart()
        assert srv.vllm[MAIN].proc.pid != before
        assert [s["process"] for s in srv.starts] == ["vllm", "vllm"]
        assert [(s["process"], s["returncode"]) for s in srv.stops] == [("vllm", 0)]  # graceful
        members = srv.stops[0]["members"]  # how each process of the group ended
        assert members and {m["ended"] for m in members} == {"exited_after_sigint"}
        assert httpx.get(f"{srv.target().base_url}/health").status_code == 200
    fk.assert_none_left(marker)


def test_a_dead_instance_fails_the_check_with_its_log(tmp_path, marker):
    with servers(tmp_path, marker) as srv:
        srv.start()
        os.killpg(srv.vllm[MAIN].proc.pid, signal.SIGKILL)
        with pytest.raises(ServerError, match=r"vllm died during the experiment \(killed by SIGKILL\)\.\n"
                                              r"Last lines of .*/vllm\.log:\n"):
            srv.target().check(1.0)
    fk.assert_none_left(marker)
