"""Alternating server runs (kvreuse.alternating): the experiments of :data:`SERVER_RUNS`
compare their arms across several fresh server runs, the arms taking turns (A B A B ...);
``run_alternating`` drives every arm of one such experiment on one platform.

**Resuming.** Such a job is long (six vLLM starts for three arms and two rounds: about ten
minutes on the H200), longer than one command on a lent GPU host may run. After each server run
an arm's part of it (its phases, records, starts and stops, store summaries) is kept in
``<raw dir>/.server-runs/<arm>.run<i>.json``; a job started again (the same job cut off at a
time budget, SIGINT) takes the server runs kept there instead of measuring them again, if they
were made by the same code (git commit), config (config hash) and accelerator (GPU, its UUIDs,
host); otherwise they are deleted and measured again. Runs kept on another GPU of the same
model and driver (a host lent anew) are taken only where :data:`RESUME_OTHER_GPU_ENV` says so. Their starts and stops say so
(``resumed_from``: when the kept server run was made). Runs kept by another commit are taken
only where the campaign names that commit in :data:`RESUME_COMMITS_ENV` (only code that measures
nothing changed in between); their starts and stops then say ``resumed_commit``. The folder is
removed once the arms' files are written.

**A time budget.** Where the runner gives one (:data:`DEADLINE_ENV`: the epoch second at which
it stops the job, ``profiles/gpu-node/run-targets.sh``'s ``BUDGET_S``), a server run is not
started once less time is left than the longest server run this job has measured: the job
stops with :class:`TimeBudgetExhausted`, its finished server runs kept, instead of taking the
measurement lock for a run the budget would cut off."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import alternating, schema
from .. import offload as vllm_offload
from ..gpu_share import MeasureLock
from ..lmcache import logs as lmcache_logs
from ..plan import ServerPlan
from ..recorder import ClientSettings, Recorder
from ..results import (RunMeta, atomic_write_text, meta_path, phase_from_dict, read_meta,
                       record_from_dict)
from ..server import exit_on_signals
from ..servers import Servers, now_iso
from ..workloads import PromptMaker
from .context import Context, RunSpec, arm_plan, base_meta, finish_meta, write_not_run, write_pair
from .miss import miss
from .overhead import random_overhead

log = logging.getLogger(__package__)  # kvreuse.experiments, as before the split
#: where a job's finished server runs are kept until it has written its arms' files
KEPT_DIR = ".server-runs"

#: the epoch second at which the runner stops this job (module docstring: A time budget)
DEADLINE_ENV = "KVREUSE_DEADLINE"

#: commits (space-separated) whose kept server runs a job takes although its own commit differs:
#: a campaign names the commit of kept runs when only code that measures nothing changed since
#: (the runner, the tables); the taken runs' starts and stops say ``resumed_commit``
RESUME_COMMITS_ENV = "KVREUSE_RESUME_COMMITS"


def resume_commits() -> set[str]:
    """The commits of :data:`RESUME_COMMITS_ENV`."""
    return set(os.environ.get(RESUME_COMMITS_ENV, "").split())


#: "1": a job takes server runs kept on another GPU of the same model, count, memory, driver and
#: CUDA (a lent host is often another machine than the last campaign step's: another GPU UUID);
#: the taken runs' starts and stops then say ``resumed_gpu`` (the kept run's accelerator), so
#: the tables can tell a job measured on two GPUs from one measured on one
RESUME_OTHER_GPU_ENV = "KVREUSE_RESUME_OTHER_GPU"

#: what two accelerators of one model may differ in for :data:`RESUME_OTHER_GPU_ENV`
GPU_INSTANCE_FIELDS = frozenset({"uuids", "host"})


def same_gpu_model(theirs: dict, ours: dict) -> bool:
    """Whether two recorded accelerators differ only in which GPU instance they were."""
    keys = (set(theirs) | set(ours)) - GPU_INSTANCE_FIELDS
    return theirs != ours and all(theirs.get(k) == ours.get(k) for k in keys)


#: experiments run as alternating server runs (kvreuse.alternating): one server run of one arm
SERVER_RUNS: dict[str, Callable[[Context, dict, int], Awaitable[None]]] = {
    "random_overhead": random_overhead,
    "miss": miss,
}


@dataclass
class ArmRuns:
    """One arm of an alternating comparison: its spec, meta and recorder across its server
    runs, each a fresh :class:`Servers` (and, for LMCache arms, a fresh store) in
    ``log_dir/run<i>``."""

    spec: RunSpec
    plan: ServerPlan            # the first server run's (the meta's server block is this one's)
    recorder: Recorder
    has_cuda: bool | None = None
    #: the job's one measurement lock, shared by its arms (kvreuse.gpu_share)
    lock: MeasureLock = dataclasses.field(default_factory=MeasureLock)
    starts: list[dict] = dataclasses.field(default_factory=list)
    stops: list[dict] = dataclasses.field(default_factory=list)
    lmcache: list[dict] = dataclasses.field(default_factory=list)
    offload: list[dict] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.arm_name

    @property
    def meta(self) -> RunMeta:
        return self.recorder.meta

    @functools.cached_property
    def prompts(self) -> PromptMaker:
        return PromptMaker.for_model(self.spec.model_dir, self.spec.seed)

    @staticmethod
    def run_dir(spec: RunSpec, server_run: int) -> Path:
        return spec.log_dir / f"run{server_run}"

    # -- a server run kept for a job started again (module docstring: Resuming) --------------
    @staticmethod
    def kept_dir(spec: RunSpec) -> Path:
        return spec.out_jsonl.parent / KEPT_DIR

    def kept_path(self, server_run: int) -> Path:
        return self.kept_dir(self.spec) / f"{self.name}.run{server_run}.json"

    def identity(self) -> dict:
        """What a kept server run must share with this job to be taken: code, config, GPU."""
        m = self.meta
        return {"git_commit": m.git_commit, "config_hash": m.config_hash, "accelerator": m.accelerator,
                "platform": m.platform, "experiment": m.experiment, "arm": m.arm}

    def keep(self, server_run: int, phases_before: set, n_records_before: int) -> None:
        """Keep what server run ``server_run`` added to this arm."""
        m = self.meta
        kept = {"identity": self.identity(), "server_run": server_run, "made_at": now_iso(),
                "phases": {k: dataclasses.asdict(v) for k, v in m.phases.items() if k not in phases_before},
                "records": [dataclasses.asdict(r) for r in self.recorder.records[n_records_before:]],
                "starts": [x for x in self.starts if x["server_run"] == server_run],
                "stops": [x for x in self.stops if x["server_run"] == server_run],
                "lmcache": [x for x in self.lmcache if x["server_run"] == server_run],
                "offload": [x for x in self.offload if x["server_run"] == server_run]}
        path = self.kept_path(server_run)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(kept, default=str))

    def resume(self, server_run: int) -> bool:
        """Take server run ``server_run`` from an earlier start of this job, if it was kept by
        the same code, config and GPU (True); a kept run that was not is deleted (False)."""
        path = self.kept_path(server_run)
        if not path.exists():
            return False
        try:
            kept = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable (%s): server run %d of %s is measured again",
                        path, e, server_run + 1, self.name)
            path.unlink(missing_ok=True)
            return False
        ours, theirs = json.loads(json.dumps(self.identity(), default=str)), dict(kept.get("identity") or {})
        since = {"resumed_from": kept["made_at"]}
        kept_sha = str(theirs.get("git_commit") or "").split(" ")[0]  # "<sha> (copy)" on a GPU host
        if theirs.get("git_commit") != ours["git_commit"] and kept_sha in resume_commits():
            # another commit that the campaign says measures the same (RESUME_COMMITS_ENV): taken,
            # and its starts and stops name it
            since["resumed_commit"] = theirs["git_commit"]
            theirs["git_commit"] = ours["git_commit"]
        other_gpu = dict(theirs.get("accelerator") or {})
        if os.environ.get(RESUME_OTHER_GPU_ENV) == "1" and same_gpu_model(other_gpu, ours["accelerator"] or {}):
            # the same GPU model on another host (RESUME_OTHER_GPU_ENV): taken, and said so
            since["resumed_gpu"] = other_gpu
            theirs["accelerator"] = ours["accelerator"]
        if theirs != ours:
            log.warning("%s: made by another commit, config or accelerator (%s): server run %d of %s is measured "
                        "again (a commit that measures the same can be named in %s; %s=1 takes runs of "
                        "another GPU of the same model)", path, kept.get("identity"),
                        server_run + 1, self.name, RESUME_COMMITS_ENV, RESUME_OTHER_GPU_ENV)
            path.unlink()
            return False
        for name, phase in kept["phases"].items():
            self.meta.add_phase(name, phase_from_dict(phase, f"{path}: phase {name}"))
        self.recorder.records.extend(record_from_dict(r, str(path)) for r in kept["records"])
        self.starts += [{**x, **since} for x in kept["starts"]]
        self.stops += [{**x, **since} for x in kept["stops"]]
        self.lmcache += kept["lmcache"]
        self.offload += kept["offload"]
        log.info("%s: server run %d of arm %s taken from %s (made %s by this commit and config on this "
                 "accelerator)", self.spec.experiment, server_run + 1, self.name, path, kept["made_at"])
        return True

    @contextlib.contextmanager
    def server_run(self, i: int) -> Iterator[Context]:
        """A context on fresh servers for server run ``i``; they are stopped on the way out,
        and their starts, stops and LMCache summary kept for the meta."""
        run_dir = self.run_dir(self.spec, i)
        plan = self.plan if i == 0 else arm_plan(self.spec, run_dir, self.has_cuda)
        self.recorder.lmcache_log_dir = run_dir if plan.lmcache is not None else None
        servers = Servers(plan, model_dir=self.spec.model_dir, model_name=self.spec.model_name,
                          log_dir=run_dir, server=self.spec.server, lock=self.lock)
        try:
            with servers:
                yield Context(self.spec, plan, servers, self.recorder, None, self.prompts)
        finally:
            self.starts += [{**x, "server_run": i} for x in servers.starts]
            self.stops += [{**x, "server_run": i} for x in servers.stops]
        if plan.lmcache is not None:  # kernels loaded or fallback, bytes per token, store cleanup
            self.lmcache.append({**lmcache_logs.finish(plan, run_dir, self.spec.model_dir), "server_run": i})
        if plan.offload is not None:  # tiers, store folder, bytes per token, store cleanup
            self.offload.append({**vllm_offload.finish(plan, self.spec.model_dir), "server_run": i})


def prepare(specs: list[RunSpec], has_cuda: bool | None = None) -> list[ArmRuns]:
    """The arms that can run here, in the given order; an arm that cannot (its plan's
    ``not_run_reason``, e.g. LMCache without CUDA) is written now as not run, with its reason."""
    arms, lock = [], MeasureLock()
    for spec in specs:
        run_dir = ArmRuns.run_dir(spec, 0)
        run_dir.mkdir(parents=True, exist_ok=True)
        plan = arm_plan(spec, run_dir, has_cuda)
        meta = base_meta(spec, plan)
        if plan.not_run_reason:
            write_not_run(spec, meta, plan.not_run_reason)
            continue
        runs = schema.get(spec.params, "experiments", spec.experiment, "server_runs")
        meta.params = {**meta.params, "server_runs": runs}
        recorder = Recorder(meta, ClientSettings.from_config(spec.model_name, spec.client, spec.seed))
        arms.append(ArmRuns(spec, plan, recorder, has_cuda, lock))
    return arms


class TimeBudgetExhausted(RuntimeError):
    """The runner's time budget would cut the next server run off (module docstring)."""


def budget_left_s() -> float | None:
    """Seconds left before the runner stops this job (:data:`DEADLINE_ENV`); None without one."""
    deadline = os.environ.get(DEADLINE_ENV)
    if not deadline:
        return None
    try:
        return float(deadline) - time.time()
    except ValueError:
        raise ValueError(f"{DEADLINE_ENV}={deadline!r}: an epoch second expected (run-targets.sh sets "
                         f"it from BUDGET_S); unset it to run without a time budget") from None


def lock_waited_s(arm) -> float:
    """Seconds this arm's job has waited for the measurement lock so far (kvreuse.gpu_share)."""
    lock = getattr(arm, "lock", None)
    return sum(w["waited_s"] for w in lock.waits) if lock is not None else 0.0


async def alternate(arms: list, server_runs: int,
                    one_run: Callable[[Context, dict, int], Awaitable[None]]) -> None:
    """``server_runs`` rounds, each arm once per round, in order (A B A B ...): ``one_run`` on a
    fresh context from each arm's ``server_run(i)``; none started that the time budget would
    cut off (module docstring: A time budget)."""
    took_s: list[float] = []  # the server runs measured by this start of the job
    for i, arm in alternating.schedule(arms, server_runs):
        if arm.resume(i):
            continue
        left = budget_left_s()
        if left is not None and took_s and left < max(took_s):
            raise TimeBudgetExhausted(
                f"{arm.spec.experiment}: server run {i + 1} of {server_runs} of arm {arm.name} not started: "
                f"{max(left, 0):.0f} s of the runner's time budget left ({DEADLINE_ENV}), and a server run "
                f"of this job took up to {max(took_s):.0f} s. Its finished server runs are kept (in "
                f"{KEPT_DIR}/ beside its results): run the job again (the next campaign step) and it "
                f"measures only the rest.")
        log.info("%s: server run %d of %d, arm %s", arm.spec.experiment, i + 1, server_runs, arm.name)
        t0, waited0 = time.monotonic(), lock_waited_s(arm)
        phases_before, n_records_before = set(arm.meta.phases), len(arm.recorder.records)
        with arm.server_run(i) as c:
            await one_run(c, c.spec.params, i)
        arm.keep(i, phases_before, n_records_before)
        # what the run itself took: its wait for another job's measurement is not its own
        took_s.append(time.monotonic() - t0 - (lock_waited_s(arm) - waited0))


def run_alternating(specs: list[RunSpec], server_runs: int, has_cuda: bool | None = None) -> list[dict]:
    """Every arm of one alternating experiment on one platform (the arms in ``specs``, the
    same experiment each): ``server_runs`` separate server runs per arm, the arms taking turns;
    each arm's JSONL and meta written at the end (arms that cannot run here: at once, as not
    run). Returns the metas (dicts) in the order of ``specs``."""
    experiment = {s.experiment for s in specs}
    if len(experiment) != 1 or next(iter(experiment)) not in SERVER_RUNS:
        raise ValueError(f"run_alternating: one experiment of {', '.join(SERVER_RUNS)} expected, "
                         f"got {', '.join(sorted(experiment)) or 'none'}")
    arms = prepare(specs, has_cuda)

    async def main():
        try:
            await alternate(arms, server_runs, SERVER_RUNS[specs[0].experiment])
        finally:
            for a in arms:
                await a.recorder.aclose()

    if arms:
        with exit_on_signals():
            asyncio.run(main())
    for a in arms:
        meta = a.meta
        finish_meta(meta, a.recorder.records, a.starts, a.stops, a.lock.as_meta())
        if a.lmcache:
            meta.lmcache = {**a.lmcache[0], "server_runs": a.lmcache}
        if a.offload:
            meta.offload = {**a.offload[0], "server_runs": a.offload}
        write_pair(a.spec.out_jsonl, a.recorder.records, meta)
    for a in arms:
        shutil.rmtree(ArmRuns.kept_dir(a.spec), ignore_errors=True)
    return [read_meta(meta_path(s.out_jsonl)).to_dict() for s in specs]
