"""Process groups: ManagedProcess.stop waits for every member and records how each ended;
``python -m kvreuse.procs stop-recorded`` ends only the groups the pipeline recorded."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kvreuse import procs
from kvreuse.procs import proc_stat
from kvreuse.server import HOST, ManagedProcess, free_port

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflow"

# A server (answers GET / with 200) that first starts a child; on SIGINT both exit.
SERVE_WITH_CHILD = textwrap.dedent("""
    import http.server, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                    http.server.SimpleHTTPRequestHandler).serve_forever()
""")


def serve_argv(port: int, child_ignores_sigint: bool) -> list[str]:
    if child_ignores_sigint:  # a child that ignores SIGINT, under a leader that obeys it
        return ["bash", "-c", f'(trap "" INT; exec sleep 60) & exec "{sys.executable}" -m http.server '
                              f'--bind {HOST} {port}']
    return [sys.executable, "-c", SERVE_WITH_CHILD, str(port)]


def managed(tmp_path, name, child_ignores_sigint, **kw) -> ManagedProcess:
    port = free_port()
    return ManagedProcess(name, serve_argv(port, child_ignores_sigint), health_url=f"http://{HOST}:{port}/",
                          log_path=tmp_path / f"{name}.log", startup_timeout_s=30, **kw)


def alive(pid: int) -> bool:
    f = proc_stat(pid)
    return f is not None and f[0] != "Z"


def wait_members(pgid: int, n: int, timeout_s: float = 10) -> list[int]:
    from kvreuse.procs import group_members
    deadline = time.monotonic() + timeout_s
    while len(members := group_members(pgid)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(members) >= n, f"process group {pgid}: expected {n} members, found {members}"
    return members


# -- ManagedProcess.stop ---------------------------------------------------------------------
def test_stop_records_a_well_behaved_group_as_exited_after_sigint(tmp_path):
    p = managed(tmp_path, "good", child_ignores_sigint=False, stop_timeout_s=20).start()
    pgid = p.proc.pid
    wait_members(pgid, 2)
    t0 = time.monotonic()
    rc = p.stop()
    assert time.monotonic() - t0 < 10, "a group that obeys SIGINT waited for its grace"
    st = p.last_stop
    assert st.pgid == pgid and rc == st.members[0].returncode and rc != -signal.SIGKILL
    assert [m.pid for m in st.members][0] == pgid and len(st.members) == 2
    assert {m.ended for m in st.members} == {procs.EXITED_AFTER_SIGINT}, st.members
    assert all(m.comm.startswith("python") for m in st.members), st.members
    assert not any(alive(m.pid) for m in st.members)
    assert p.stop() is None  # idempotent
    meta = st.as_meta()
    assert meta[0] == {"pid": pgid, "comm": st.members[0].comm, "ended": procs.EXITED_AFTER_SIGINT,
                       "returncode": rc}


def test_stop_sigkills_a_child_that_ignores_sigint_after_the_grace(tmp_path):
    p = managed(tmp_path, "stubborn", child_ignores_sigint=True, stop_timeout_s=1.5).start()
    pgid = p.proc.pid
    wait_members(pgid, 2)
    t0 = time.monotonic()
    rc = p.stop()
    took = time.monotonic() - t0
    assert 1.5 <= took < 8, took
    by_comm = {m.comm: m for m in p.last_stop.members}
    assert by_comm["sleep"].ended == procs.KILLED_BY_SIGKILL, p.last_stop.members
    leader = p.last_stop.members[0]
    assert leader.pid == pgid and leader.ended == procs.EXITED_AFTER_SIGINT and leader.returncode == rc
    assert not alive(by_comm["sleep"].pid)


def test_stop_after_the_leader_died_records_it_as_already_gone(tmp_path):
    p = managed(tmp_path, "crashed", child_ignores_sigint=True, stop_timeout_s=30).start()
    pgid = p.proc.pid
    wait_members(pgid, 2)
    os.kill(pgid, signal.SIGKILL)  # the leader crashes; its child stays
    p.proc.wait(timeout=10)
    t0 = time.monotonic()
    assert p.stop() == -signal.SIGKILL
    assert time.monotonic() - t0 < 8, "the orphaned child got the grace instead of SIGKILL"
    leader, child = p.last_stop.members
    assert (leader.pid, leader.ended, leader.returncode) == (pgid, procs.ALREADY_GONE, -9)
    assert (child.comm, child.ended) == ("sleep", procs.KILLED_BY_SIGKILL)


# -- stop-recorded ---------------------------------------------------------------------------
JOB = textwrap.dedent("""
    # a job that starts two servers and is then killed before it can stop them
    import json, sys, time
    from kvreuse.server import ManagedProcess
    sys.path.insert(0, sys.argv[1])
    from test_procs import managed
    from pathlib import Path
    good = managed(Path(sys.argv[2]), "good", child_ignores_sigint=False).start()
    bad = managed(Path(sys.argv[2]), "bad", child_ignores_sigint=True).start()
    print(json.dumps([good.proc.pid, bad.proc.pid]), flush=True)
    time.sleep(120)
""")


def test_stop_recorded_ends_the_recorded_groups_and_nothing_else(tmp_path):
    pgid_dir = tmp_path / "pgids"
    env = {**os.environ, procs.PGID_DIR_ENV: str(pgid_dir),
           "PYTHONPATH": os.pathsep.join([str(WORKFLOW), os.environ.get("PYTHONPATH", "")])}
    unrelated = subprocess.Popen(["sleep", "120"], start_new_session=True)
    job = subprocess.Popen([sys.executable, "-c", JOB, str(Path(__file__).parent), str(tmp_path)],
                           env=env, stdout=subprocess.PIPE, text=True)
    try:
        pgids = json.loads(job.stdout.readline())
        members = {g: wait_members(g, 2) for g in pgids}
        records = sorted(pgid_dir.glob("*.json"))
        assert sorted(json.loads(r.read_text())["pgid"] for r in records) == sorted(pgids)
        job.kill()  # the job dies hard: its servers stay, recorded
        job.wait(timeout=10)
        assert all(alive(p) for ms in members.values() for p in ms)
        # a stale record for a pid that now belongs to someone else (start time differs)
        start = int(proc_stat(unrelated.pid)[19])
        stale = {"name": "old", "pgid": unrelated.pid, "start_time": str(start - 1), "token": "x",
                 "argv": ["old"], "host": json.loads(records[0].read_text())["host"],
                 "boot_id": json.loads(records[0].read_text())["boot_id"]}
        (pgid_dir / "stale.json").write_text(json.dumps(stale))

        out = subprocess.run([sys.executable, "-m", "kvreuse.procs", "stop-recorded", str(pgid_dir),
                              "--grace", "1.5"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not [p for ms in members.values() for p in ms if alive(p)], out.stdout + out.stderr
        assert unrelated.poll() is None and alive(unrelated.pid), "an unrecorded process was signalled"
        assert "killed_by_sigkill" in out.stdout and "exited_after_sigint" in out.stdout, out.stdout
        assert not [r for g in pgids for r in pgid_dir.glob(f"*-{g}-*.json")], "records of ended groups remain"
    finally:
        for p in (job, unrelated):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        for g in pgids if "pgids" in locals() else []:  # only if the test failed half-way
            for pid in wait_members(g, 0):
                procs.send(pid, procs.start_time(pid) or "", signal.SIGKILL)


def test_stop_recorded_with_no_folder_says_so(tmp_path):
    assert procs.main(["stop-recorded", str(tmp_path / "absent")]) == 0


# -- nothing in the repository ends processes by name -----------------------------------------
def test_no_process_is_ended_by_name_pattern():
    words = ["p" + "kill", "kill" + "all"]
    pattern = re.compile("|".join(words).encode())
    if shutil.which("git") and (REPO / ".git").exists():
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                               capture_output=True, check=True).stdout.decode().split("\0")
    else:
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if ".git" not in p.parts]
    hits = []
    for name in filter(None, files):
        path = REPO / name
        if path.is_symlink() or not path.is_file():
            continue
        if pattern.search(path.read_bytes()):
            hits.append(name)
    assert not hits, f"{' or '.join(words)} in {hits}: end only the process groups the pipeline " \
                     f"recorded (python -m kvreuse.procs stop-recorded)"
