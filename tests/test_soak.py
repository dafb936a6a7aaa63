"""The soak's judgement (``scripts/soak.py``'s ``judge``, what ``make soak`` asserts): fed
synthetic runs, each promise holds on a steady one and fails on the run that breaks it, and
only that promise fails. The soak itself runs under ``make soak`` and ``make reliability``."""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import soak
from soak import Sample, Window, judge

WINDOW_S = 30.0
COUNT = 60  # 30 minutes
EDGE = soak.edge_windows(COUNT, WINDOW_S)
UPKEEP = {"done": 30.0}


def steady_samples(
    rss_mib: float = 120.0, rss_growth_per_s: float = 0.0, fds: int = 40, pool: float = 2
) -> list[Sample]:
    """A sample every 10 s of a server holding steady, with a little noise that never
    accumulates (RSS ±0.5%, a descriptor and a connection coming and going)."""
    rng = random.Random(7)
    return [
        Sample(
            t_s=t,
            rss_kib=int((rss_mib + rss_growth_per_s * t) * 1024 * rng.uniform(0.995, 1.005)),
            fds=fds + rng.randint(0, 1),
            pool_in_use=pool - rng.randint(0, 1),
            pool_size=10,
            db_sessions=3 + rng.randint(0, 1),
        )
        for t in range(0, int(COUNT * WINDOW_S) + 1, 10)
    ]


def steady_windows(p99_ms: float = 10.0, others: float = 0.3) -> list[Window]:
    """Windows of 1,000 calls, 1% of them at ``p99_ms`` or just under, the rest ~3 ms."""
    windows = []
    for i in range(COUNT):
        latencies = [3.0 + (j % 7) * 0.1 for j in range(985)] + [p99_ms * 0.9] * 5
        latencies += [p99_ms] * 10
        windows.append(
            Window(
                index=i + 1,
                start_s=i * WINDOW_S,
                end_s=(i + 1) * WINDOW_S,
                calls=1000,
                errors=0,
                latencies_ms=latencies,
                others_cores=others,
                load_average=1.0 + others,
                allowed_share=0.3,
            )
        )
    return windows


def failed(verdict: soak.Verdict) -> list[str]:
    return [p.name.split(":")[0] for p in verdict.failed]


def test_a_steady_run_holds_every_promise() -> None:
    verdict = judge(steady_samples(), steady_windows(), UPKEEP, EDGE)

    assert failed(verdict) == []
    assert verdict.notes == []
    assert len(verdict.promises) == 8


def test_the_edges_are_five_minutes_or_a_fifth_of_a_shorter_soak() -> None:
    assert soak.edge_windows(60, 30.0) == 10  # 30 minutes: 5 minutes each
    assert soak.edge_windows(15, 12.0) == 3  # 3 minutes: 36 s each
    assert soak.edge_windows(2, 10.0) == 1


def test_memory_that_keeps_growing_fails_and_warm_up_growth_does_not() -> None:
    # 10% over the 25 minutes after the first five.
    growing = steady_samples(rss_growth_per_s=120 * 0.10 / 1500)
    warming = [replace(s, rss_kib=s.rss_kib // 2) if s.t_s < 200 else s for s in steady_samples()]

    assert failed(judge(growing, steady_windows(), UPKEEP, EDGE)) == ["memory"]
    assert failed(judge(warming, steady_windows(), UPKEEP, EDGE)) == []


def test_memory_growth_while_the_server_fell_behind_the_rate_still_fails_and_says_so() -> None:
    growing = steady_samples(rss_growth_per_s=120 * 0.10 / 1500)
    windows = steady_windows()
    for w in windows:
        w.rps = 2000.0 if w.index > COUNT - EDGE else 2600.0

    verdict = judge(growing, windows, UPKEEP, EDGE)

    assert failed(verdict) == ["memory"]
    assert len(verdict.notes) == 1
    assert "fell behind" in verdict.notes[0]


def test_one_high_sample_at_the_end_is_not_growth() -> None:
    samples = steady_samples()
    samples[-1] = replace(samples[-1], rss_kib=int(samples[-1].rss_kib * 1.08))

    assert failed(judge(samples, steady_windows(), UPKEEP, EDGE)) == []


def test_memory_growth_just_under_the_bound_holds() -> None:
    under = steady_samples(rss_growth_per_s=120 * 0.035 / 1500)

    assert failed(judge(under, steady_windows(), UPKEEP, EDGE)) == []


def test_leaked_file_descriptors_fail_the_descriptors_promise() -> None:
    # One descriptor a window: 50 more by the end.
    samples = [replace(s, fds=s.fds + int(s.t_s // WINDOW_S)) for s in steady_samples()]

    assert failed(judge(samples, steady_windows(), UPKEEP, EDGE)) == ["open file descriptors flat"]


def test_a_pool_that_fills_and_sessions_that_pile_up_fail_as_not_flat() -> None:
    held = [replace(s, pool_in_use=10) if s.t_s > 1200 else s for s in steady_samples()]
    sessions = [replace(s, db_sessions=s.db_sessions + int(s.t_s // 300)) for s in steady_samples()]
    resized = [replace(s, pool_size=20) if s.t_s > 900 else s for s in steady_samples()]

    assert failed(judge(held, steady_windows(), UPKEEP, EDGE)) == ["pool connections in use flat"]
    assert failed(judge(sessions, steady_windows(), UPKEEP, EDGE)) == ["database sessions flat"]
    assert failed(judge(resized, steady_windows(), UPKEEP, EDGE)) == ["pool size unchanged"]


def test_a_p99_that_blows_up_in_the_last_edge_fails_the_latency_promise() -> None:
    windows = steady_windows()
    windows[-EDGE:] = steady_windows(p99_ms=40.0)[-EDGE:]

    verdict = judge(steady_samples(), windows, UPKEEP, EDGE)

    assert failed(verdict) == ["latency"]
    assert verdict.figures["p99_ratio"] == pytest.approx(4.0)
    assert verdict.notes == []  # the neighbours were as busy as before: no excuse offered
    assert not verdict.latency_failed_under_busier_neighbours  # so the soak is not extended


def test_a_p99_failure_under_busier_neighbours_still_fails_and_says_so() -> None:
    windows = steady_windows(others=0.2)
    windows[-EDGE:] = steady_windows(p99_ms=40.0, others=1.4)[-EDGE:]

    verdict = judge(steady_samples(), windows, UPKEEP, EDGE)

    assert failed(verdict) == ["latency"]
    assert len(verdict.notes) == 1
    assert "neighbours" in verdict.notes[0]
    assert verdict.latency_failed_under_busier_neighbours  # the soak goes on for an edge


def test_a_first_edge_under_busier_neighbours_is_noted_as_lenient() -> None:
    windows = steady_windows(others=0.1)
    windows[:EDGE] = steady_windows(p99_ms=12.0, others=1.2)[:EDGE]

    verdict = judge(steady_samples(), windows, UPKEEP, EDGE)

    assert failed(verdict) == []
    assert len(verdict.notes) == 1
    assert "lenient" in verdict.notes[0]


def test_a_p99_just_within_one_and_a_half_times_holds() -> None:
    windows = steady_windows()
    windows[-EDGE:] = steady_windows(p99_ms=14.5)[-EDGE:]

    assert failed(judge(steady_samples(), windows, UPKEEP, EDGE)) == []


def test_a_slow_window_in_the_middle_is_not_the_last_edge() -> None:
    windows = steady_windows()
    windows[COUNT // 2] = steady_windows(p99_ms=200.0)[COUNT // 2]

    assert failed(judge(steady_samples(), windows, UPKEEP, EDGE)) == []


def test_one_error_fails_the_errors_promise() -> None:
    windows = steady_windows()
    windows[20].errors = 1
    windows[20].error_kinds = {"rpc error: code = Unavailable": 1}

    verdict = judge(steady_samples(), windows, UPKEEP, EDGE)

    assert failed(verdict) == ["0 errors"]
    assert "Unavailable" in verdict.failed[0].figure


def test_no_upkeep_round_or_a_failed_one_fails_the_upkeep_promise() -> None:
    assert failed(judge(steady_samples(), steady_windows(), {}, EDGE)) == [
        "storage upkeep rounds ran, none failed"
    ]
    assert failed(judge(steady_samples(), steady_windows(), {"done": 5, "failed": 1}, EDGE)) == [
        "storage upkeep rounds ran, none failed"
    ]
    assert failed(judge(steady_samples(), steady_windows(), {"skipped": 3}, EDGE)) == []


def test_a_run_too_short_to_have_two_edges_is_refused() -> None:
    with pytest.raises(ValueError):
        judge(steady_samples(), steady_windows()[:EDGE], UPKEEP, EDGE)
