"""The LMCache server's GPU memory just before and just after a vLLM stop (kvreuse.servers,
kvreuse.gpu_memory), with a stand-in nvidia-smi on PATH and the stand-in vLLM (tests/fakevllm)
playing both servers; runs.csv shows it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import faultkit as fk
from kvreuse import gpu_memory, procs
from kvreuse.plan import ServerPlan
from kvreuse.results import RunMeta
from kvreuse.server import free_port
from kvreuse.servers import Servers
from kvreuse.tables_runs import runs_table


def fake_nvidia_smi(folder, monkeypatch) -> None:
    """nvidia-smi that answers the compute-apps query from ``apps<n>.csv`` on its n-th call
    (the last file once they run out), and fails on any other query."""
    folder.mkdir(exist_ok=True)
    (folder / "nvidia-smi").write_text(f"""#!/bin/sh
[ "$*" = "{' '.join(gpu_memory.QUERY[1:])}" ] || {{ echo "unexpected query: $*" >&2; exit 2; }}
n=$(cat {folder}/calls 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {folder}/calls
f={folder}/apps$n.csv; [ -f "$f" ] || f=$(ls {folder}/apps*.csv | sort -V | tail -1)
cat "$f"
""")
    (folder / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")


def test_used_mib_by_pid_parses_and_sums(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch)
    (tmp_path / "bin/apps1.csv").write_text("101, 866\n101, 10\n202, [N/A]\n303, 53170\n")
    assert gpu_memory.used_mib_by_pid() == {101: 876.0, 303: 53170.0}


def test_none_without_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_memory.used_mib_by_pid() is None and gpu_memory.group_mib(1) is None


@pytest.fixture
def marker() -> str:
    return fk.new_marker()


def plan_with_server(marker: str) -> ServerPlan:
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
            "--port", str(port)]
    return ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)},
                      lmcache_server={"argv": argv, "health_url": f"http://127.0.0.1:{port}/health"})


def test_vllm_stop_records_the_servers_gpu_memory_before_and_after(tmp_path, monkeypatch, marker):
    with Servers(plan_with_server(marker), model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                 server={"startup_timeout_s": 30, "stop_timeout_s": 10}) as srv:
        srv.start()
        members = procs.group_members(srv.lmcache_server.proc.pid)
        vllm_pid = srv.vllm["main"].proc.pid
        assert len(members) == 2 and vllm_pid not in members  # the stand-in server and its engine child
        # before the stop: the server holds 866 MiB (over its group's processes); after: 34,532
        fake_nvidia_smi(tmp_path / "bin", monkeypatch)
        (tmp_path / "bin/apps1.csv").write_text(
            "".join(f"{pid}, {mib}\n" for pid, mib in zip(members, [800, 66, 0])) + f"{vllm_pid}, 53170\n")
        (tmp_path / "bin/apps2.csv").write_text(f"{members[0]}, 34532\n")
        srv.stop()
        assert srv.stops[-1]["process"] == "vllm"
        assert srv.stops[-1]["lmcache_server_gpu_mib"] == {"before": 866.0, "after": 34532.0}
        # the server's own stop: no entry (it is not a vLLM stop)
        srv.start()
        srv.stop(lmcache_server=True)
        assert [s["process"] for s in srv.stops] == ["vllm", "vllm", "lmcache-server"]
        assert "lmcache_server_gpu_mib" in srv.stops[1] and "lmcache_server_gpu_mib" not in srv.stops[2]
    fk.assert_none_left(marker)


def test_no_reading_without_nvidia_smi_and_no_entry_without_a_server(tmp_path, monkeypatch, marker):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi on it
    with Servers(plan_with_server(marker), model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs",
                 server={"startup_timeout_s": 30, "stop_timeout_s": 10}) as srv:
        srv.start()
        srv.stop()
        assert srv.stops[-1]["lmcache_server_gpu_mib"] == {"before": None, "after": None}
    plain = ServerPlan(vllm_args=[], env={fk.MARKER: marker, "PYTHONPATH": str(fk.FAKEVLLM)})
    with Servers(plain, model_dir=tmp_path, model_name="m", log_dir=tmp_path / "logs2",
                 server={"startup_timeout_s": 30, "stop_timeout_s": 10}) as srv:
        srv.start()
        srv.stop()
        assert "lmcache_server_gpu_mib" not in srv.stops[-1]
    fk.assert_none_left(marker)


def test_runs_table_shows_the_first_stop_that_recorded_it():
    def meta(stops):
        return RunMeta(status="ok", platform="h200", experiment="restart", arm="lmcache_mp",
                       arm_config={}, params={}, accelerator={}, versions={}, model={}, server={},
                       client={}, config_hash=None, git_commit=None, started_at="", finished_at=None,
                       phases={}, stops=stops)

    stops = [{"process": "vllm", "lmcache_server_gpu_mib": {"before": 866.0, "after": 34532.0}},
             {"process": "vllm", "lmcache_server_gpu_mib": {"before": 1.0, "after": 2.0}}]
    t = runs_table([meta(stops), meta([{"process": "vllm"}]),
                    meta([{"process": "vllm", "lmcache_server_gpu_mib": {"before": None, "after": None}}])])
    assert t.lmcache_server_gpu_mib_before_stop[0] == 866.0 and t.lmcache_server_gpu_mib_after_stop[0] == 34532.0
    assert np.isnan(t.lmcache_server_gpu_mib_before_stop[1]) and np.isnan(t.lmcache_server_gpu_mib_after_stop[2])
