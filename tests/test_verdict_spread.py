"""A run's restart verdict over many prefixes (kvreuse.verdict.run_verdict): the median decides,
but a run where some prefixes had hits after the restart is partial, never "not persisted"."""

from kvreuse import verdict
from kvreuse.verdict import PrefixVerdict


def prefix(n, fraction):
    v, why = verdict.classify(fraction, True)
    return PrefixVerdict(0, n, fraction * n, n, fraction, True, v, why)


def test_some_prefixes_with_hits_make_a_partial_run_even_where_the_median_is_zero():
    run = [prefix(n, 1.0) for n in (1024, 2048)] + [prefix(n, 0.0) for n in (4096, 8192, 16384)]
    got = verdict.run_verdict(run)
    assert got["verdict"] == verdict.PARTIAL and got["n_prefixes_persisted"] == 2
    assert got["verdict_reason"].startswith("2 of 5 prefixes had hits after the restart")


def test_no_hits_at_all_is_not_persisted_and_most_hits_is_persisted():
    assert verdict.run_verdict([prefix(1024, 0.0)] * 3)["verdict"] == verdict.NOT_PERSISTED
    assert verdict.run_verdict([prefix(1024, 1.0)] * 2 + [prefix(2048, 0.0)])["verdict"] == verdict.PERSISTED
