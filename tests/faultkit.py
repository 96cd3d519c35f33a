"""Helpers for the fault-injection suite (tests/test_faults.py).

- Processes are told apart by a marker in their environment (``KVREUSE_FAULT_TEST=<uuid>``),
  which every server the pipeline starts inherits: "nothing left behind" means no live
  process carries the marker, whatever else (another pipeline run, its vLLM) runs here.
- :func:`runner` runs one experiment (``kvreuse.experiments.run``) in a child process, the way
  the run rule's script does, with its logging and stderr in a log file.
- ``tests/fakevllm`` put first on PYTHONPATH makes ``python -m vllm.entrypoints.openai.api_server``
  a stand-in that fails on demand (see its module docstring).

Run as a script (``python tests/faultkit.py SPEC.json LOG``) it is that child: it reads a
RunSpec from JSON and runs it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kvreuse.procs import proc_stat

REPO = Path(__file__).resolve().parents[1]
FAKEVLLM = REPO / "tests" / "fakevllm"
MARKER = "KVREUSE_FAULT_TEST"
FAKE_TOKEN = "hf_FAKEfaultsuiteTOKEN0123456789abcdef"


def new_marker() -> str:
    return uuid.uuid4().hex


# -- the process table ---------------------------------------------------------------------
def marked(marker: str) -> dict[int, str]:
    """Live processes (not zombies) whose environment carries ``marker``: pid -> command line."""
    needle = f"{MARKER}={marker}".encode()
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
            if needle not in env.split(b"\0"):
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if (fields := proc_stat(d.name)) and fields[0] != "Z":
            out[int(d.name)] = cmd
    return out


def assert_none_left(marker: str, timeout_s: float = 5.0) -> None:
    """No process started under ``marker`` is alive (a short wait for reapers)."""
    deadline = time.monotonic() + timeout_s
    while (left := marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}"


def wait_for(pred, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def listening_addresses(pids) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets in LISTEN state that ``pids`` hold (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    out = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, state, inode = f[1], f[3], f[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            if width == 4:
                addr = ".".join(str(b) for b in raw[::-1])
            else:  # four little-endian 32-bit words
                words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
                addr = ":".join(b"".join(words).hex()[i:i + 4] for i in range(0, 32, 4))
            out.add((addr, int(port_hex, 16)))
    return out


# -- one experiment in a child process -----------------------------------------------------
def run_spec(config: dict, model_dir: Path, root: Path, experiment: str, *, arm: str = "apc",
             params: dict | None = None, server: dict | None = None, client: dict | None = None) -> dict:
    """A RunSpec (as JSON-able dict) for the cpu platform, results under ``root``."""
    from kvreuse import config as kc
    from kvreuse.provenance import config_hash

    p = kc.deep_merge(kc.experiment_params(config, "cpu", experiment), params or {})
    p["arms"] = [arm]
    spec = {
        "platform": "cpu", "experiment": experiment, "arm_name": arm,
        "arm": copy.deepcopy(config["arms"][arm]), "params": p, "model_name": "tiny-llama",
        "model": config["models"]["tiny-llama"],
        "server": kc.deep_merge(kc.server_config(config, "cpu"), server or {}),
        "client": kc.deep_merge(config["client"], client or {}), "seed": config["seed"],
    }
    spec["config_hash"] = config_hash(spec)
    spec.update(model_dir=str(model_dir), out_jsonl=str(root / f"results/raw/cpu/{experiment}/{arm}.jsonl"),
                log_dir=str(root / f"results/logs/cpu/{experiment}/{arm}"), repo_dir=str(root))
    return spec


def child_env(marker: str, *, fake: str | None = None, extra: dict | None = None) -> dict:
    """The environment of a pipeline child: the marker; with ``fake``, the stand-in as vLLM."""
    paths = [str(REPO / "workflow")]
    if fake is not None:
        paths.insert(0, str(FAKEVLLM))
    env = {**os.environ, MARKER: marker,
           "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("FAKE_VLLM", None)
    if fake is not None:
        env["FAKE_VLLM"] = fake
    env.update(extra or {})
    return env


def start_runner(spec: dict, env: dict, log: Path) -> subprocess.Popen:
    spec_path = log.with_suffix(".spec.json")
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, __file__, str(spec_path), str(log)], env=env,
                            cwd=spec["repo_dir"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running(spec: dict, env: dict, log: Path):
    """:func:`start_runner`, killed on the way out if the test left it running."""
    proc = start_runner(spec, env, log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def signal_and_wait(proc: subprocess.Popen, sig: int, *, again_after_s: float | None = None,
                    timeout_s: float = 60) -> tuple[int, float]:
    """Send ``sig`` (a second time after ``again_after_s``, if given); (exit code, seconds
    from the first signal to the exit)."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    if again_after_s is not None:
        time.sleep(again_after_s)
        proc.send_signal(sig)
    rc = proc.wait(timeout=timeout_s)
    return rc, time.monotonic() - t0


def runner(spec: dict, env: dict, log: Path, timeout_s: float = 600) -> tuple[int, str]:
    """Run one experiment to its end; (exit code, its log)."""
    proc = start_runner(spec, env, log)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        raise
    return rc, log.read_text() if log.exists() else ""


# -- a pipeline in a scratch folder -----------------------------------------------------------


def small_config(config: dict) -> dict:
    """The default study, cpu only, every experiment cut to a few requests."""
    c = copy.deepcopy(config)
    c.update(run_platforms=["cpu"], report_platforms=["cpu"])
    c["client"].update(max_tokens=4, request_timeout_s=30)
    c["server"].update(startup_timeout_s=120, stop_timeout_s=10)
    c["platforms"]["cpu"].pop("experiments", None)
    sizes = {
        "baseline": dict(n_requests=3, prefix_tokens=128, suffix_tokens=8),
        "cold_warm": dict(n_warm=3, prefix_tokens=128, suffix_tokens=8),
        "restart": dict(n_warm=2, n_post_restart_steady=2, prefix_tokens=128, suffix_tokens=8),
        "prefix_sweep": dict(prefix_tokens_list=[64, 128], n_warm=2, suffix_tokens=8),
        "multiturn": dict(turns=3, system_tokens=64, user_tokens=16, suffix_tokens=8),
        "serving": dict(input_len=64, output_len=4, num_prompts=3, request_rates=[1], fidelity_requests=2),
        "random_overhead": dict(n_requests=3, repeats=2, system_tokens=16, context_tokens=16),
        "multiturn_long": dict(history_tokens_list=[64, 128], common_prefix_tokens=16, n_clients=2, turns=2,
                               user_tokens=8, output_tokens=4),
        "chunk_sweep": dict(history_tokens_list=[128], common_prefix_tokens=16, n_clients=2, turns=2,
                            user_tokens=8, output_tokens=4),
    }
    for exp, over in sizes.items():
        if exp in c["experiments"]:
            c["experiments"][exp].update(over)
    for params in c["experiments"].values():  # LMCache arms need CUDA: not run here anyway
        params["arms"] = [a for a in params["arms"] if not c["arms"][a].get("lmcache")]
    # an experiment of LMCache arms only (cross_instance) has none left: left out; pressure and
    # miss too (tests/test_pressure_miss.py covers them; here they would only add server starts)
    c["experiments"] = {e: params for e, params in c["experiments"].items()
                        if params["arms"] and e not in ("pressure", "miss")}
    return c


def make_workdir(dst: Path, config: dict, model_dir: Path) -> Path:
    """A copy of the repository's files (not its results or tests) in ``dst``, with ``config``
    as its config.yaml and the model linked."""
    import shutil

    import yaml

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if f.startswith(("results/", "tests/")) or not (REPO / f).is_file():
            continue
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dst / f)
    (dst / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    models = dst / config["paths"]["models"]
    models.mkdir(parents=True, exist_ok=True)
    (models / "tiny-llama").symlink_to(Path(model_dir).absolute())
    return dst


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--profile", "profiles/local", *args]


def workdir_env(workdir: Path, marker: str, *, fake: str | None = "", extra: dict | None = None) -> dict:
    """Like :func:`child_env`, with the workdir's own copy of the package on PYTHONPATH."""
    env = child_env(marker, fake=fake, extra=extra)
    paths = ([str(FAKEVLLM)] if fake is not None else []) + [str(workdir / "workflow")]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def snapshot(paths) -> dict[str, tuple[int, bytes]]:
    """mtime_ns and content of files, to prove that other jobs' results were left alone."""
    return {str(p): (Path(p).stat().st_mtime_ns, Path(p).read_bytes()) for p in paths}


def _main(spec_path: str, log_path: str) -> None:
    from types import SimpleNamespace

    from kvreuse.experiments import RunSpec, run
    from kvreuse.rulelog import to_rule_log

    to_rule_log(SimpleNamespace(log=[log_path]))
    spec = json.loads(Path(spec_path).read_text())
    for key in ("model_dir", "out_jsonl", "log_dir", "repo_dir"):
        spec[key] = Path(spec[key])
    run(RunSpec(**spec))


if __name__ == "__main__":
    _main(*sys.argv[1:3])
