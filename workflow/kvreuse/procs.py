"""Process groups: watch how each member ends, and end only the groups this pipeline started.

- :class:`GroupWatch` follows the members of one process group while it is being stopped
  (SIGINT, a grace, SIGKILL) and records how each one ended (:class:`MemberEnd`).
  :meth:`kvreuse.server.ManagedProcess.stop` uses it.
- Recording: when ``KVREUSE_PGID_DIR`` is set (profiles/gpu-node/run-targets.sh sets it to a
  fresh folder per run), every :class:`~kvreuse.server.ManagedProcess` writes one JSON file
  there when it starts its group (pgid, command, the leader's start time from /proc, a token
  put into the group's environment) and removes it once the whole group is gone.
- ``python -m kvreuse.procs stop-recorded DIR`` ends the groups still recorded in DIR (servers
  a killed job left behind): SIGINT, a grace, SIGKILL. It signals a process only if it is
  still one of ours: the leader with the recorded start time, or a member of its group whose
  environment carries the recorded token; a recycled pid is never signalled (each signal goes
  through a pidfd opened before the check).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


log = logging.getLogger("kvreuse.procs")  # also when run as __main__

PGID_DIR_ENV = "KVREUSE_PGID_DIR"
TOKEN_ENV = "KVREUSE_PGID_TOKEN"
_START = 19  # index of starttime (field 22 of /proc/<pid>/stat) in proc_stat's list

# how a member of a group ended
ALREADY_GONE = "already_gone"              # before any signal of the stop
EXITED_AFTER_SIGINT = "exited_after_sigint"  # within the grace after SIGINT
KILLED_BY_SIGKILL = "killed_by_sigkill"
STILL_RUNNING = "still_running"            # even after SIGKILL (e.g. uninterruptible sleep)
_ENDING = {signal.SIGINT: EXITED_AFTER_SIGINT, signal.SIGKILL: KILLED_BY_SIGKILL}



def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)": state, ppid, pgrp, ...; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (fields := proc_stat(d.name)) and fields[0] != "Z" \
                and int(fields[2]) == pgid:
            out.append(int(d.name))
    return out

@dataclass
class MemberEnd:
    """One member of a stopped process group: pid, command name, how it ended."""
    pid: int
    comm: str
    ended: str
    returncode: int | None = None  # the leader's exit status (as Popen's: -9 = SIGKILL)


@dataclass
class GroupStop:
    """How the members of one process group ended, leader first."""
    name: str
    pgid: int
    grace_s: float
    members: list[MemberEnd] = field(default_factory=list)

    @property
    def left(self) -> list[MemberEnd]:
        return [m for m in self.members if m.ended == STILL_RUNNING]

    def as_meta(self) -> list[dict]:
        """The members as a meta's ``stops`` entry takes them (``members``)."""
        return [asdict(m) for m in self.members]

    def summary(self) -> str:
        return "; ".join(f"pid {m.pid} {m.comm}: {m.ended}"
                         + (f" (exit status {m.returncode})" if m.returncode is not None else "")
                         for m in self.members) or "no members"


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def start_time(pid: int) -> str | None:
    """The start time of a live or zombie ``pid`` (clock ticks after boot), None if gone."""
    fields = proc_stat(pid)
    return fields[_START] if fields else None


def send(pid: int, start: str, sig: int) -> bool:
    """``sig`` to ``pid`` only if it is still the process that started at ``start``.

    The pidfd is opened before the check, so the signal cannot reach a process that took
    the pid over in between.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:  # no pidfds (kernel < 5.3): check, then kill
        if start_time(pid) != start:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            return True
        return False
    try:
        if start_time(pid) != start:
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)


class GroupWatch:
    """The live members of process group ``pgid`` that ``accept(pid, stat fields)`` takes.

    Each member is known by (pid, start time). :meth:`signal` sends a signal to every member
    and to any that joins later; :meth:`scan` records a member that is gone (or a zombie) with
    the ending of the last signal sent. Once a scan finds no member the watch is over and never
    looks again: only then could the pgid be reused by someone else.
    """

    def __init__(self, pgid: int, accept: Callable[[int, list[str]], bool] | None = None):
        self.pgid = pgid
        self.accept = accept or (lambda pid, fields: True)
        self.sig: int | None = None
        self.ending = ALREADY_GONE
        self.alive: dict[int, tuple[str, str]] = {}  # pid -> (start time, comm)
        self.ended: list[MemberEnd] = []
        self.over = False
        self.scan()

    def scan(self) -> bool:
        """Update the members; True while some are alive."""
        if self.over:
            return False
        for pid, (start, name) in list(self.alive.items()):
            f = proc_stat(pid)
            if not f or f[0] == "Z" or f[_START] != start or int(f[2]) != self.pgid:
                del self.alive[pid]
                self.ended.append(MemberEnd(pid, name, self.ending))
        for pid in group_members(self.pgid):
            f = proc_stat(pid)
            if pid in self.alive or not f or f[0] == "Z" or not self.accept(pid, f):
                continue
            self.alive[pid] = (f[_START], comm(pid))
            if self.sig is not None:
                send(pid, f[_START], self.sig)
        self.over = not self.alive
        return not self.over

    def signal(self, sig: int) -> None:
        self.scan()  # who ended before this signal keeps the previous ending
        self.sig, self.ending = sig, _ENDING[sig]
        for pid, (start, _) in self.alive.items():
            send(pid, start, sig)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every member to end; True if none is left."""
        deadline = time.monotonic() + timeout_s
        pause = 0.01
        while self.scan():
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.1)
        return True

    def members(self) -> list[MemberEnd]:
        """Every member seen, the leader (pid == pgid) first; the live ones as still running."""
        out = self.ended + [MemberEnd(pid, name, STILL_RUNNING) for pid, (_, name) in self.alive.items()]
        return sorted(out, key=lambda m: (m.pid != self.pgid, m.pid))


def stop_group(watch: GroupWatch, name: str, grace_s: float, *, interrupt: bool = True,
               wait_s: float | None = None, kill_wait_s: float = 10.0) -> GroupStop:
    """SIGINT to the members (unless sent already, or ``interrupt`` is off), up to ``wait_s``
    (default ``grace_s``) for all of them to end, then SIGKILL to the rest."""
    if interrupt and watch.sig is None and watch.scan():
        watch.signal(signal.SIGINT)
    if watch.sig == signal.SIGINT and not watch.wait(grace_s if wait_s is None else wait_s):
        left = ", ".join(f"{c} (pid {p})" for p, (_, c) in watch.alive.items())
        log.warning("%s ignored SIGINT for %.0f s; sending SIGKILL to what is left of process "
                    "group %d: %s", name, grace_s, watch.pgid, left)
    if watch.scan():
        watch.signal(signal.SIGKILL)
        if not watch.wait(kill_wait_s):
            log.warning("process group %d still has members %.0f s after SIGKILL: %s", watch.pgid,
                        kill_wait_s, ", ".join(f"{c} (pid {p})" for p, (_, c) in watch.alive.items()))
    return GroupStop(name, watch.pgid, grace_s, watch.members())


# -- recording -----------------------------------------------------------------------------
def recording_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    value = (os.environ if environ is None else environ).get(PGID_DIR_ENV)
    return Path(value) if value else None


def tag_environ(env: dict[str, str]) -> str | None:
    """Put a fresh token into a server's environment ``env`` if recording is on; the token."""
    if recording_dir() is None:
        return None
    token = env[TOKEN_ENV] = uuid.uuid4().hex
    return token


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def record(name: str, pid: int, argv: Sequence[str], token: str | None) -> Path | None:
    """Write the record of the group that ``pid`` leads (it started it with a new session)."""
    folder = recording_dir()
    if folder is None:
        return None
    start = start_time(pid)
    if start is None:  # exited and already reaped: nothing to end later
        return None
    entry = {"name": name, "pgid": pid, "start_time": start, "token": token, "argv": list(argv),
             "host": socket.gethostname(), "boot_id": _boot_id(), "recorded_by": os.getpid(),
             "recorded_at": time.strftime("%FT%T%z")}
    path = folder / f"{entry['host']}-{pid}-{start}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entry, indent=1))
        os.replace(tmp, path)  # whole or absent: stop-recorded never reads half a record
    except OSError as e:
        raise RecordError(f"cannot record process group {pid} ({name}) in {folder} "
                          f"({PGID_DIR_ENV}): {e}; make that folder writable or unset "
                          f"{PGID_DIR_ENV}") from e
    return path


def forget(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class RecordError(RuntimeError):
    """A process group could not be recorded for the runner's cleanup."""


def _has_token(pid: int, token: str | None) -> bool:
    if not token:
        return False
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{TOKEN_ENV}={token}".encode() in env


def recorded_watch(entry: Mapping) -> GroupWatch:
    """The members of a recorded group that are provably ours (see the module docstring)."""
    pgid, start, token = int(entry["pgid"]), str(entry["start_time"]), entry.get("token")

    def accept(pid: int, fields: list[str]) -> bool:
        if int(fields[_START]) < int(start):  # older than our leader: not of our group
            return False
        if pid == pgid:
            return fields[_START] == start
        # while our leader lives (or is an unreaped zombie) the pgid is still our group's
        return start_time(pgid) == start or _has_token(pid, token)

    return GroupWatch(pgid, accept)


def stop_recorded(folder: Path, grace_s: float = 3.0, kill_wait_s: float = 10.0) -> list[GroupStop]:
    """End the groups recorded in ``folder`` (this host's, this boot's); drop their records."""
    host, boot = socket.gethostname(), _boot_id()
    records = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            int(entry["pgid"]), int(entry["start_time"])
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("skipping %s: not a process group record of kvreuse (%s: %s); "
                        "nothing was signalled for it", path, type(e).__name__, e)
            continue
        if entry.get("host") != host:
            log.info("skipping %s: recorded on %s, this is %s", path, entry.get("host"), host)
            continue
        if entry.get("boot_id") != boot:  # every process of an earlier boot is gone
            forget(path)
            continue
        records.append((path, entry, recorded_watch(entry)))
    # SIGINT to all groups first, so that their graces run together
    for _, _, watch in records:
        if watch.scan():
            watch.signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    out = []
    for path, entry, watch in records:
        name = f"{entry.get('name', '?')} ({' '.join(entry.get('argv', []))[:80]})"
        out.append(stop_group(watch, name, grace_s, wait_s=max(0.0, deadline - time.monotonic()),
                              kill_wait_s=kill_wait_s))
        if not watch.alive:
            forget(path)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kvreuse.procs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stop-recorded", help="end the process groups still recorded in DIR")
    s.add_argument("dir", type=Path)
    s.add_argument("--grace", type=float, default=3.0, help="seconds from SIGINT to SIGKILL (3)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.dir.is_dir():
        print(f"stop-recorded: {args.dir} does not exist: nothing was recorded there", file=sys.stderr)
        return 0
    stops = stop_recorded(args.dir, args.grace)
    for st in stops:
        print(f"stop-recorded: {st.name}, process group {st.pgid}: {st.summary()}")
    left = [m for st in stops for m in st.left]
    if left:
        print(f"stop-recorded: still running after SIGKILL: "
              f"{', '.join(f'{m.comm} (pid {m.pid})' for m in left)}; they may be in uninterruptible "
              f"sleep (ps -o pid,stat,wchan,cmd -p PID shows it); their records stay in {args.dir}",
              file=sys.stderr)
        return 1
    if not stops:
        print(f"stop-recorded: no process group recorded in {args.dir} is left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
