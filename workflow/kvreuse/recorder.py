"""The phase recorder: requests through the streaming client, booked as typed phases.

A :class:`Recorder` sends a phase's prompts one after another to a :class:`Target` (any base
URL and scrape URLs: a vLLM server of :class:`kvreuse.servers.Servers`, or a test server),
keeps one :class:`RequestRecord` per request, reads the counters before and after the phase
(their delta goes into the phase) and, for LMCache arms, LMCache's retrieve/store log lines
written during it. Each phase is added to the run's :class:`RunMeta` as a :class:`Phase` whose
fields say what it was. Other request sources (the load generator) book their phases through
:meth:`Recorder.measure`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import metrics, schema
from .lmcache import logs as lmcache_logs
from .client import RequestResult, completion_payload, stream_completion
from .results import Phase, RequestRecord, RunMeta, phase_name
from .errors import ServerError
from .servers import Target

log = logging.getLogger(__name__)

#: the phase fields that each of its requests' records repeats
RECORD_FIELDS = ("prefix_tokens", "request_rate", "repeat", "turn", "context_tokens", "server_run")


@dataclass(frozen=True)
class ClientSettings:
    """What every request of a run carries (the config's ``client`` section, model, seed)."""

    model: str
    max_tokens: int
    request_timeout_s: float
    temperature: float = 0.0
    seed: int | None = 0

    @classmethod
    def from_config(cls, model: str, client: dict, seed: int | None = 0) -> "ClientSettings":
        return cls(model, client["max_tokens"], client["request_timeout_s"],
                   temperature=schema.get(client, "client", "temperature"), seed=seed)


@dataclass
class PhaseRun:
    """A phase being measured: its name, kind and fields, and the records it has made."""

    name: str
    kind: str
    fields: dict
    meta: RunMeta
    records: list[RequestRecord] = field(default_factory=list)
    n_requests: int | None = None      # None: the number of records
    bench_summary: dict | None = None

    def record(self, seq: int, **values) -> RequestRecord:
        """A record of this phase (identity and the phase's fields filled in), kept."""
        repeated = {k: self.fields[k] for k in RECORD_FIELDS if self.fields.get(k) is not None}
        rec = RequestRecord(platform=self.meta.platform, experiment=self.meta.experiment,
                            arm=self.meta.arm, phase=self.name, phase_kind=self.kind, seq=seq,
                            **{**repeated, **values})
        self.records.append(rec)
        return rec


class Recorder:
    """Sends prompts, keeps the records and adds each phase to ``meta``.

    ``lmcache_log_dir``: the folder of the servers' logs, for LMCache arms (their per-phase
    retrieve/store lines go into ``Phase.lmcache_log``); None for other arms.
    """

    def __init__(self, meta: RunMeta, client: ClientSettings, *, lmcache_log_dir: Path | None = None):
        self.meta = meta
        self.settings = client
        self.lmcache_log_dir = lmcache_log_dir
        self.records: list[RequestRecord] = []
        self.http = httpx.AsyncClient(timeout=None)

    async def __aenter__(self) -> "Recorder":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- phases ----------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def measure(self, target: Target, kind: str, *, name: str | None = None,
                      lmcache_log: bool = True, **fields) -> AsyncIterator[PhaseRun]:
        """Counters (and LMCache's log) around the block; on a normal exit the phase and its
        records are kept (an exception keeps neither). ``fields``: :class:`Phase` fields."""
        default = phase_name(kind)  # an unknown kind fails here, before any request
        run = PhaseRun(name or default, kind, fields, self.meta)
        if run.name in self.meta.phases:
            raise ValueError(f"phase {run.name!r} recorded twice in {self.meta.experiment}/{self.meta.arm}")
        scraper = metrics.Scraper(list(target.scrape_urls), optional=tuple(target.optional_scrape_urls))
        before = self._scrape(target, scraper)
        marks = (lmcache_logs.log_marks(self.lmcache_log_dir)
                 if lmcache_log and self.lmcache_log_dir is not None else None)
        t0 = time.perf_counter()
        yield run
        wall = time.perf_counter() - t0
        phase = Phase(kind=kind, n_requests=len(run.records) if run.n_requests is None else run.n_requests,
                      wall_s=round(wall, 3), counters=metrics.delta(before, self._scrape(target, scraper)),
                      bench_summary=run.bench_summary, **fields)
        if marks is not None:  # LMCache's per-request retrieve/store lines (bytes, ms)
            phase.lmcache_log = lmcache_logs.log_stats(marks)
        self.meta.add_phase(run.name, phase)
        self.records.extend(run.records)

    async def phase(self, target: Target, kind: str, prompts: list[list[int]], *,
                    name: str | None = None, **fields) -> list[RequestResult]:
        """Send ``prompts`` one after another as phase ``name`` (default: the kind)."""
        async with self.measure(target, kind, name=name, **fields) as run:
            out = [await self.request(target, run, seq, prompt) for seq, prompt in enumerate(prompts)]
        ok = sorted(r.ttft_ms for r in out if r.ttft_ms is not None)
        log.info("%s/%s/%s: %d requests, median TTFT %s ms, hit tokens %d", self.meta.experiment,
                 self.meta.arm, run.name, len(prompts), f"{ok[len(ok) // 2]:.1f}" if ok else "n/a",
                 metrics.hit_tokens(self.meta.phases[run.name].counters))
        return out

    async def request(self, target: Target, run: PhaseRun, seq: int, prompt: list[int],
                      **fields) -> RequestResult:
        """One streaming request, recorded; a failed one is recorded too, and a dead server
        behind it fails the job. ``fields``: the record's own fields (``turn``,
        ``conversation``, ``context_tokens``), over the phase's."""
        s = self.settings
        payload = completion_payload(s.model, prompt, s.max_tokens, temperature=s.temperature, seed=s.seed)
        t_start = time.time()
        res = await stream_completion(self.http, target.base_url, payload, timeout_s=s.request_timeout_s)
        if res.error:
            log.warning("%s/%s seq %d failed: %s", self.meta.experiment, run.name, seq, res.error)
            # a dead server fails the job, a bad request does not; a connection cut short may
            # be a server on its way down, so give it a moment to be seen as dead
            target.check(0.0 if res.error.startswith("HTTP ") else 1.0)
        run.record(seq, t_start=round(t_start, 3), **res.to_dict(),
                   prompt_tokens_sent=len(prompt) if res.prompt_tokens is None else None, **fields)
        return res

    @staticmethod
    def _scrape(target: Target, scraper: metrics.Scraper) -> dict[str, float]:
        """The counters now; a server that died in between fails the job with its log tail."""
        try:
            return scraper.scrape()
        except httpx.HTTPError as e:
            target.check(1.0)
            raise ServerError(f"could not read the counters from {scraper.urls}: "
                              f"{type(e).__name__}: {e}") from e
