"""The results schema (kvreuse.results): validated on read, older versions refused or converted
explicitly, phases selected by their fields."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kvreuse import aggregate, migrate
from kvreuse.results import (SCHEMA_VERSION, Phase, RequestRecord, ResultsSchemaError, RunMeta,
                             meta_path, read_meta, read_records, write_meta, write_records)

REPO = Path(__file__).resolve().parents[1]
COMMITTED = sorted((REPO / "results/raw").glob("*/*/*.jsonl"))


def a_meta(**over) -> RunMeta:
    base = dict(status="ok", platform="cpu", experiment="random_overhead", arm="apc",
                arm_config={"prefix_caching": True}, params={}, accelerator={"kind": "cpu"},
                versions={"vllm": "0.32.0"}, model={"name": "tiny-llama"}, server={}, client={},
                config_hash="abc", git_commit="0" * 40, started_at="t0", finished_at="t1", phases={})
    return RunMeta(**{**base, **over})


def a_record(phase: str, kind: str, seq: int, ttft: float, **over) -> RequestRecord:
    base = dict(platform="cpu", experiment="random_overhead", arm="apc", phase=phase,
                phase_kind=kind, seq=seq, prompt_tokens=10, cached_tokens=0, output_tokens=4,
                ttft_ms=ttft, itl_ms=[1.0, 1.0], e2e_ms=ttft + 3, error=None)
    return RequestRecord(**{**base, **over})


def v1_meta(tmp_path: Path) -> Path:
    """A meta as the code before the schema wrote it: no schema_version, phases by name."""
    src = REPO / "tests/data/v1/restart-apc.meta.json"
    dst = tmp_path / "restart/apc.meta.json"
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    shutil.copy(REPO / "tests/data/v1/restart-apc.jsonl", tmp_path / "restart/apc.jsonl")
    return dst


def test_a_meta_of_the_previous_version_fails_naming_file_and_field(tmp_path):
    path = v1_meta(tmp_path)
    with pytest.raises(ResultsSchemaError) as e:
        read_meta(path)
    assert str(path) in str(e.value) and "'schema_version'" in str(e.value)
    assert "python -m kvreuse.migrate" in str(e.value)  # and says what to do


def test_aggregation_refuses_the_previous_version(tmp_path):
    v1_meta(tmp_path)
    with pytest.raises(ResultsSchemaError, match="schema_version"):
        aggregate.load([tmp_path / "restart/apc.jsonl"])


@pytest.mark.parametrize("field", ["config_hash", "phases", "platform"])
def test_a_missing_field_fails_naming_file_and_field(tmp_path, field):
    data = a_meta().to_dict()
    del data[field]
    path = tmp_path / "x.meta.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsSchemaError, match=rf"{path}: missing field '{field}'"):
        read_meta(path)


def test_a_record_without_a_field_or_with_an_unknown_kind_fails_with_its_line(tmp_path):
    rec = json.loads(json.dumps(a_record("repeat_0", "repeat", 0, 5.0).__dict__))
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "phase_kind": "cold_1024"}) + "\n")
    with pytest.raises(ResultsSchemaError, match=rf"{path}: line 2: field 'phase_kind'"):
        read_records(path)
    del rec["ttft_ms"]
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ResultsSchemaError, match="line 1: missing field 'ttft_ms'"):
        read_records(path)


def test_round_trip(tmp_path):
    m = a_meta()
    m.add_phase("repeat_0", Phase(kind="repeat", n_requests=1, wall_s=0.1, counters={"x": 1.0}, repeat=0))
    write_meta(tmp_path / "a.meta.json", m)
    write_records(tmp_path / "a.jsonl", [a_record("repeat_0", "repeat", 0, 5.0, repeat=0)])
    back = read_meta(tmp_path / "a.meta.json")
    assert back == m and back.schema_version == SCHEMA_VERSION
    assert read_records(tmp_path / "a.jsonl")[0].repeat == 0


def test_migration_brings_version_1_over_and_records_what_it_changed(tmp_path):
    path = v1_meta(tmp_path)
    before = json.loads(path.read_text())
    changes = migrate.migrate_pair(tmp_path / "restart/apc.jsonl")
    m = read_meta(path)
    assert m.schema_version == SCHEMA_VERSION
    assert {n: (p.kind, p.after_restart) for n, p in m.phases.items()} == {
        "populate": ("populate", False), "warm": ("warm", False),
        "post_restart_first": ("post_restart_first", True),
        "post_restart_steady": ("post_restart_steady", True)}
    (entry,) = m.migration
    assert entry["from_version"] == 1 and entry["changes"] == changes  # meta and records
    assert "stops: absent in the original (the code of that run did not record it), read as its default" in changes
    for k, v in before.items():  # nothing else changed
        if k != "phases":
            assert m.to_dict()[k] == v
    recs = read_records(tmp_path / "restart/apc.jsonl")
    assert [r.phase_kind for r in recs] == [r.phase for r in recs]  # these kinds are their names
    assert migrate.migrate_pair(tmp_path / "restart/apc.jsonl") == []  # once only


def test_migration_reads_numbers_from_version_1_names_and_checks_them():
    ph = migrate.v1_phase("cold_1024", {"counters": {}, "n_requests": 1, "wall_s": 0.1,
                                        "prefix_tokens": 1024}, "x")
    assert (ph["kind"], ph["prefix_tokens"]) == ("cold", 1024)
    assert migrate.v1_phase("rate_inf", {}, "x")["request_rate"] == "inf"
    assert migrate.v1_phase("warmup_post_restart", {}, "x")["after_restart"] is True
    with pytest.raises(ResultsSchemaError, match="the name says prefix_tokens 1024"):
        migrate.v1_phase("cold_1024", {"prefix_tokens": 512}, "x")
    with pytest.raises(ResultsSchemaError, match="cannot tell its kind"):
        migrate.v1_phase("mystery_3", {}, "x")


def test_the_converter_reads_version_1_without_writing(tmp_path):
    path = v1_meta(tmp_path)
    before = path.read_bytes()
    meta, records, changes = migrate.read_converted(tmp_path / "restart/apc.jsonl")
    assert path.read_bytes() == before
    assert changes and meta.migration[0]["by"].endswith("(in memory)")
    assert {r.phase_kind for r in records} == {"populate", "warm", "post_restart_first", "post_restart_steady"}


@pytest.mark.parametrize("jsonl", COMMITTED, ids=lambda p: str(p.relative_to(REPO / "results/raw")))
def test_committed_results_are_at_the_current_version(jsonl):
    meta = read_meta(meta_path(jsonl))
    records = read_records(jsonl)
    assert meta.schema_version == SCHEMA_VERSION
    assert {r.phase for r in records} <= set(meta.phases)
    assert all(r.phase_kind == meta.phases[r.phase].kind for r in records)


def test_aggregation_selects_phases_by_kind_not_by_name(tmp_path):
    """Phases named anything: the random-prompt table counts kind 'repeat' and pairs by repeat."""
    for arm, ttft in (("apc", 10.0), ("lmcache_cpu", 12.0)):
        m = a_meta(arm=arm)
        m.add_phase("first pass", Phase(kind="repeat", n_requests=2, wall_s=1, counters={}, repeat=0))
        m.add_phase("get ready", Phase(kind="warmup", n_requests=1, wall_s=1, counters={}))
        recs = [a_record("get ready", "warmup", 0, 999.0, arm=arm)]
        recs += [a_record("first pass", "repeat", i, ttft + i, arm=arm, repeat=0) for i in range(2)]
        write_meta(tmp_path / f"{arm}.meta.json", m)
        write_records(tmp_path / f"{arm}.jsonl", recs)
    t = aggregate.build("random_overhead", [tmp_path / "apc.jsonl", tmp_path / "lmcache_cpu.jsonl"], 0.05)
    row = t.set_index("arm").loc["lmcache_cpu"]
    assert row["n"] == 2 and row["ttft_mean_ms"] == 12.5  # the warm-up (999 ms) is left out
    assert row["ttft_delta_pct"] == pytest.approx(100 * (12.5 / 10.5 - 1))
