"""``make soak``: one server under the bench's ``mixed`` load for a long while (30 minutes;
``make reliability`` runs 3), at a fixed rate, watched for what creeps: memory, file
descriptors, database connections, latency, errors; and the storage upkeep rounds that ran
under it. RELIABILITY.md ("Soak") says what it asserts and how to read it.

The run: a fresh embedded PostgreSQL in ``.bench/soak-pgdata`` (or the fresh database
``QUOTA_AUTHORITY_DATABASE_URL`` names), migrated, laid out and seeded as ``make bench``
does (``bench.lay_out_partitions``, ``bench.seed_scenarios``); one ``quota-authority serve``
with production settings except two: metrics on (``QUOTA_AUTHORITY_METRICS_LISTEN``, to read
the pool and the upkeep rounds) and ``QUOTA_AUTHORITY_UPKEEP_INTERVAL_S`` short (hourly
by default, so that rounds run during the soak). First ``spread`` as the bench measures it
(ghz at 100 concurrent calls, briefly), then ``mixed`` at ``RATE_FRACTION`` of spread's
calls a second, held fixed by ghz's ``--rps``, in consecutive windows of equal length (one
ghz run each, so every window has its exact latencies, errors and calls). A sampler thread
reads, every few seconds, the server's resident memory (``/proc/PID/status`` VmRSS), its
open file descriptors (``/proc/PID/fd``), the pool's connections in use (``/metrics``) and
the database's sessions (``pg_stat_activity``). For each window: the machine's load
average and the CPU the rest of the machine used (what neighbours did, apart from the
server, its PostgreSQL, ghz and this script).

``judge`` (a pure function of those samples and windows) decides each promise; the script
prints the table and the verdicts, writes ``.bench/soak.json`` and ``.bench/soak.md``, and
exits 1 naming each promise that failed (2: it could not run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import bench
from prometheus_client.parser import text_string_to_metric_families

from quota_authority.engine.retention import retained
from quota_authority.engine.weeks import week_containing
from quota_authority.policy import Policy
from quota_authority.store import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
RELIABILITY_RESULTS = ROOT / ".reliability" / "results.jsonl"

# The load: mixed at this fraction of the calls a second spread reached in the same run.
RATE_FRACTION = 0.7
SPREAD_S = 10.0  # spread's measured run (after bench.WARMUP_S of warm-up)
WARMUP_S = 15.0  # mixed at the soak's rate, unmeasured, before the first window

# The promises.
RSS_GROWTH_MAX = 0.05  # resident memory at the end over the end of the first edge
P99_RATIO_MAX = 1.5  # the last edge's p99 over the first edge's
EDGE_S = 300.0  # the first and last 5 minutes; a shorter soak compares fifths
# "Flat": the largest value sampled in the last edge is at most the largest in the first
# edge plus this much. The slack absorbs what comes and goes at any instant without
# accumulating: for connections, a batch opening one while another commits and an upkeep
# round holding one; for descriptors, a ghz run's client connections closing as the next
# window's open, and a scrape's. A leak of one a call, a window, a ghz connection or an
# upkeep round exceeds it within the run.
POOL_SLACK = 2
FD_SLACK = 4
# A p99 failure is flagged as perhaps the machine's when the rest of the machine used this
# many more cores on average in the last edge than in the first.
NEIGHBOUR_CORES = 0.25
# Then the soak goes on for another edge, at most this many times, and judges its new last
# edge: a neighbour's burst passes, a server that degraded stays degraded. The bounds stay.
EXTENSIONS_MAX = 2


# --- what is measured -------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading of the server, ``t_s`` seconds after the first window began."""

    t_s: float
    rss_kib: int
    fds: int
    pool_in_use: float
    pool_size: float
    db_sessions: int  # the database's client sessions other than the sampler's


@dataclass
class Window:
    """One window of the load: one ghz run at the fixed rate."""

    index: int
    start_s: float
    end_s: float
    calls: int
    errors: int
    latencies_ms: list[float] = field(repr=False)
    rps: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)
    load_average: float = 0.0  # the machine's 1-minute load average at the window's end
    others_cores: float = 0.0  # cores the rest of the machine used, on average
    server_cores: float = 0.0
    allowed_share: float | None = None  # of the window's decisions, those allowed


@dataclass(frozen=True)
class Promise:
    name: str
    held: bool
    figure: str


@dataclass(frozen=True)
class Verdict:
    promises: list[Promise]
    notes: list[str]
    figures: dict[str, Any]

    @property
    def failed(self) -> list[Promise]:
        return [p for p in self.promises if not p.held]

    @property
    def latency_failed_under_busier_neighbours(self) -> bool:
        """The latency promise failed while the rest of the machine was busier in the last
        edge than in the first (by ``NEIGHBOUR_CORES``): worth another edge."""
        return bool(self.figures.get("latency_failed_under_busier_neighbours"))


# --- the analysis: a pure function ------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def edge_windows(count: int, window_s: float) -> int:
    """Windows in each edge: 5 minutes' worth, or a fifth of a shorter soak; at least 1."""
    edge_s = min(EDGE_S, count * window_s / 5)
    return max(1, min(count // 2, round(edge_s / window_s)))


def _median_rss(samples: Sequence[Sample], window: Window) -> float | None:
    """The median RSS (KiB) of the samples taken during ``window`` (None: none was)."""
    during = sorted(s.rss_kib for s in samples if window.start_s <= s.t_s <= window.end_s)
    if not during:
        return None
    middle = len(during) // 2
    return during[middle] if len(during) % 2 else (during[middle - 1] + during[middle]) / 2


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def judge(
    samples: Sequence[Sample],
    windows: Sequence[Window],
    upkeep_rounds: dict[str, float],
    edge: int,
) -> Verdict:
    """Each promise of the soak, held or not, with its figure; ``edge`` windows make the
    first and the last edge (the first and last 5 minutes). ``upkeep_rounds``: rounds of
    storage upkeep that ran during the windows, by outcome."""
    if len(windows) < 2 * edge or not samples:
        raise ValueError(f"{len(windows)} windows and {len(samples)} samples: too few to judge")
    first, last = windows[:edge], windows[-edge:]
    first_end, last_start = first[-1].end_s, last[0].start_s
    early = [s for s in samples if s.t_s <= first_end]
    late = [s for s in samples if s.t_s >= last_start]
    if not early or not late:
        raise ValueError("no sample in the first or the last edge")
    promises: list[Promise] = []
    notes: list[str] = []

    # RSS moves by a MiB or two from one sample to the next (objects of the calls in flight,
    # allocator arenas): "at minute 5" and "at the end" are each the median of the samples
    # in a window, the first edge's last and the run's last, so that one sample's luck
    # neither passes nor fails the promise.
    at_edge = _median_rss(samples, first[-1]) or early[-1].rss_kib
    at_end = _median_rss(samples, last[-1]) or samples[-1].rss_kib
    growth = at_end / at_edge - 1
    promises.append(
        Promise(
            f"memory: RSS grows ≤ {RSS_GROWTH_MAX:.0%} after the first edge",
            growth <= RSS_GROWTH_MAX,
            f"median {at_edge / 1024:.1f} MiB in the window to {first[-1].end_s:.0f} s, "
            f"{at_end / 1024:.1f} MiB in the window to {last[-1].end_s:.0f} s: {growth:+.1%}",
        )
    )

    rate_first, rate_last = _mean([w.rps for w in first]), _mean([w.rps for w in last])
    if growth > RSS_GROWTH_MAX and rate_last < 0.9 * rate_first:
        notes.append(
            f"the memory promise failed while the server fell behind the fixed rate in the "
            f"last edge ({rate_last:,.0f} calls/s against {rate_first:,.0f} in the first): "
            "more calls were in flight and queued, which holds more memory; a run that keeps "
            "the rate tells growth from load"
        )

    def flat(name: str, read: Callable[[Sample], float], slack: float) -> None:
        before, after = max(map(read, early)), max(map(read, late))
        promises.append(
            Promise(
                f"{name} flat: last edge's max ≤ first edge's max + {slack:g}",
                after <= before + slack,
                f"max {before:g} in the first edge, {after:g} in the last",
            )
        )

    flat("pool connections in use", lambda s: s.pool_in_use, POOL_SLACK)
    flat("database sessions", lambda s: s.db_sessions, POOL_SLACK)
    sizes = sorted({s.pool_size for s in samples})
    promises.append(
        Promise("pool size unchanged", len(sizes) == 1, f"{', '.join(f'{v:g}' for v in sizes)}")
    )
    flat("open file descriptors", lambda s: s.fds, FD_SLACK)

    p99_first = percentile([ms for w in first for ms in w.latencies_ms], 0.99)
    p99_last = percentile([ms for w in last for ms in w.latencies_ms], 0.99)
    ratio = p99_last / p99_first
    p99_held = ratio <= P99_RATIO_MAX
    promises.append(
        Promise(
            f"latency: the last edge's p99 ≤ {P99_RATIO_MAX:g}× the first's",
            p99_held,
            f"{p99_first:.1f} ms, then {p99_last:.1f} ms: {ratio:.2f}×",
        )
    )
    others_first = _mean([w.others_cores for w in first])
    others_last = _mean([w.others_cores for w in last])
    load_first = _mean([w.load_average for w in first])
    load_last = _mean([w.load_average for w in last])
    busier_last = not p99_held and others_last - others_first >= NEIGHBOUR_CORES
    if p99_held and others_first - others_last >= NEIGHBOUR_CORES:
        notes.append(
            f"the rest of the machine used {others_first:.2f} cores in the first edge against "
            f"{others_last:.2f} in the last: the first edge's p99 was measured under busier "
            "neighbours, so the latency comparison was lenient"
        )
    if busier_last:
        notes.append(
            f"the p99 promise failed while the rest of the machine used {others_last:.2f} "
            f"cores in the last edge against {others_first:.2f} in the first (load average "
            f"{load_last:.2f} against {load_first:.2f}): the neighbours, not only the server, "
            "may have slowed it; run it again on a quieter machine before reading it as the "
            "server's"
        )

    errors = sum(w.errors for w in windows)
    calls = sum(w.calls for w in windows)
    kinds: dict[str, int] = {}
    for w in windows:
        for kind, n in w.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    promises.append(
        Promise(
            "0 errors",
            errors == 0,
            f"{errors} in {calls:,} calls" + (f": {kinds}" if kinds else ""),
        )
    )

    ran = upkeep_rounds.get("done", 0) + upkeep_rounds.get("skipped", 0)
    failed = upkeep_rounds.get("failed", 0)
    promises.append(
        Promise(
            "storage upkeep rounds ran, none failed",
            ran > 0 and failed == 0,
            ", ".join(f"{n:g} {outcome}" for outcome, n in sorted(upkeep_rounds.items())) or "none",
        )
    )

    shares = [w.allowed_share for w in windows if w.allowed_share is not None]
    if shares and max(shares) - min(shares) > 0.2:
        notes.append(
            f"the decisions allowed went from {shares[0]:.0%} of a window's to "
            f"{shares[-1]:.0%} (quotas and message limits used up as the load goes on): "
            "the last edge's calls are not the same mix as the first's"
        )
    figures = {
        "rss_mib_at_edge": round(at_edge / 1024, 1),
        "rss_mib_at_end": round(at_end / 1024, 1),
        "rss_growth": round(growth, 4),
        "p99_ms_first": round(p99_first, 2),
        "p99_ms_last": round(p99_last, 2),
        "p99_ratio": round(ratio, 3),
        "others_cores_first": round(others_first, 2),
        "others_cores_last": round(others_last, 2),
        "load_average_first": round(load_first, 2),
        "load_average_last": round(load_last, 2),
        "calls": calls,
        "errors": errors,
        "upkeep_rounds": upkeep_rounds,
        "latency_failed_under_busier_neighbours": busier_last,
    }
    return Verdict(promises, notes, figures)


# --- reading the server -----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the server's /metrics, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def upkeep_rounds(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[str, float]:
    return {
        dict(labels)["outcome"]: value
        for (name, labels), value in metrics.items()
        if name == "quota_authority_storage_upkeep_rounds_total"
    }


def decisions(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> tuple[float, float]:
    """Decisions so far, and of them those allowed."""
    total = allowed = 0.0
    for (name, labels), value in metrics.items():
        if name == "quota_authority_decisions_total":
            total += value
            if dict(labels).get("allowed") == "true":
                allowed += value
    return total, allowed


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """A thread that samples the server every ``every_s`` until stopped."""

    def __init__(self, pid: int, metrics_port: int, url: str, every_s: float, t0: float):
        self.pid, self.metrics_port, self.url = pid, metrics_port, url
        self.every_s, self.t0 = every_s, t0
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._failure:
            raise self._failure[0]

    def _run(self) -> None:
        try:
            asyncio.run(self._sample())
        except BaseException as e:  # re-raised in the caller's thread
            self._failure.append(e)

    async def _sample(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                fds = open_fds(self.pid)  # before the scrape, whose connection is one
                rss = rss_kib(self.pid)
                metrics = await asyncio.to_thread(scrape, self.metrics_port)
                sessions = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
                self.samples.append(
                    Sample(
                        t_s=round(began - self.t0, 2),
                        rss_kib=rss,
                        fds=fds,
                        pool_in_use=metrics[("quota_authority_db_pool_connections_in_use", ())],
                        pool_size=metrics[("quota_authority_db_pool_size", ())],
                        db_sessions=int(sessions),
                    )
                )
                await asyncio.to_thread(
                    self._stop.wait, max(0.0, began + self.every_s - time.monotonic())
                )
        finally:
            await conn.close()


# --- driving the load -------------------------------------------------------------------


def ghz_window(target: str, rps: int, seconds: float) -> tuple[dict[str, Any], list[float]]:
    """One ghz run of the mixed load at ``rps``: its report and every call's latency (ms)."""
    report_path = bench.BENCH_DIR / "ghz-soak.json"
    command = [
        str(bench.GHZ),
        "--insecure",
        f"--import-paths={bench.PROTO_DIR}",
        f"--proto={bench.PROTO}",
        f"--call={bench.CALL}",
        f"--data-file={bench.LOADS / 'mixed.json'}",
        f"--concurrency={bench.CONCURRENCY}",
        f"--connections={bench.CONNECTIONS}",
        f"--rps={rps}",
        f"--duration={seconds}s",
        "--duration-stop=wait",
        "--format=json",
        f"--output={report_path}",
        target,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report = json.loads(report_path.read_text())
    report_path.unlink()
    latencies = [d["latency"] / 1e6 for d in report.get("details") or []]
    return report, latencies


def _self_and_children_cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + bench._children_cpu_s()


def run_window(
    index: int, server: bench.Server, rps: int, seconds: float, metrics_port: int, t0: float
) -> Window:
    """One window: the load, and what the machine did meanwhile."""
    cpu_before = server.cpu_s()
    mine_before = _self_and_children_cpu_s()
    busy_before = machine_busy_s()
    made_before = decisions(scrape(metrics_port))
    start = time.monotonic()
    report, latencies = ghz_window(server.target, rps, seconds)
    end = time.monotonic()
    made_after = decisions(scrape(metrics_port))
    cpu_after = server.cpu_s()
    mine = _self_and_children_cpu_s() - mine_before  # this script and ghz
    busy = machine_busy_s() - busy_before
    ours = mine + sum(
        cpu_after[k] - cpu_before[k] for k in ("server", "postgres") if k in cpu_after
    )
    elapsed = end - start
    made = made_after[0] - made_before[0]
    ok = report["statusCodeDistribution"].get("OK", 0)
    return Window(
        index=index,
        start_s=round(start - t0, 2),
        end_s=round(end - t0, 2),
        calls=report["count"],
        errors=report["count"] - ok,
        latencies_ms=latencies,
        rps=round(report["rps"], 1),
        error_kinds=report.get("errorDistribution") or {},
        load_average=os.getloadavg()[0],
        others_cores=round(max(0.0, busy - ours) / elapsed, 2),
        server_cores=round((cpu_after["server"] - cpu_before["server"]) / elapsed, 2),
        allowed_share=None if made <= 0 else round((made_after[1] - made_before[1]) / made, 3),
    )


# --- reporting --------------------------------------------------------------------------


def window_rows(samples: Sequence[Sample], windows: Sequence[Window]) -> list[dict[str, Any]]:
    """Each window's figures, with the samples taken during it."""
    rows = []
    for w in windows:
        during = [s for s in samples if w.start_s <= s.t_s <= w.end_s] or [
            min(samples, key=lambda s: abs(s.t_s - w.end_s))
        ]
        lat = w.latencies_ms or [0.0]
        rows.append(
            {
                "window": w.index,
                "from_s": round(w.start_s),
                "calls/s": round(w.rps),
                "p50 ms": round(percentile(lat, 0.5), 2),
                "p99 ms": round(percentile(lat, 0.99), 2),
                "max ms": round(max(lat), 1),
                "errors": w.errors,
                "RSS MiB": round(during[-1].rss_kib / 1024, 1),
                "fds max": max(s.fds for s in during),
                "pool in use max": max(s.pool_in_use for s in during),
                "db sessions max": max(s.db_sessions for s in during),
                "allowed": "" if w.allowed_share is None else f"{w.allowed_share:.0%}",
                "server cores": w.server_cores,
                "others cores": w.others_cores,
                "load avg": round(w.load_average, 2),
            }
        )
    return rows


def text_table(rows: list[dict[str, Any]]) -> str:
    heads = list(rows[0])
    cells = [heads] + [[str(r[h]) for h in heads] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(heads))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


def markdown_table(rows: list[dict[str, Any]]) -> str:
    heads = list(rows[0])
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    lines += ["| " + " | ".join(str(r[h]) for h in heads) + " |" for r in rows]
    return "\n".join(lines)


def verdict_lines(verdict: Verdict) -> list[str]:
    lines = [f"{'held  ' if p.held else 'FAILED'}  {p.name}: {p.figure}" for p in verdict.promises]
    lines += [f"note: {n}" for n in verdict.notes]
    return lines


# --- the run ----------------------------------------------------------------------------


def soak(minutes: float, window_s: float | None, upkeep_s: float | None) -> dict[str, Any]:
    duration_s = minutes * 60
    window_s = window_s or max(10.0, min(30.0, duration_s / 15))
    count = max(2, round(duration_s / window_s))
    edge = edge_windows(count, window_s)
    upkeep_s = upkeep_s or max(5.0, min(60.0, duration_s / 10))
    sample_s = max(2.0, min(5.0, window_s / 3))
    policy = Policy()
    week = week_containing(datetime.now(UTC), "UTC", policy.week)
    given_url = os.environ.get("QUOTA_AUTHORITY_DATABASE_URL")
    data_dir = bench.BENCH_DIR / "soak-pgdata"
    with ExitStack() as stack:
        if given_url is None:
            shutil.rmtree(data_dir, ignore_errors=True)
            url = stack.enter_context(EmbeddedPostgres(data_dir)).url
        else:
            url = given_url
        bench.log("soak: migrating, laying out partitions and seeding")
        asyncio.run(bench.migrated(url))
        asyncio.run(bench.lay_out_partitions(url, retained(datetime.now(UTC), policy)))
        asyncio.run(bench.seed_scenarios(url, week, policy))
        metrics_port = bench.free_port()
        env = {
            "QUOTA_AUTHORITY_DATABASE_URL": url,
            "QUOTA_AUTHORITY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "QUOTA_AUTHORITY_UPKEEP_INTERVAL_S": f"{upkeep_s:g}",
        }
        command = [sys.executable, "-m", "quota_authority.cli", "serve"]
        dirs = () if given_url is not None else (data_dir,)
        with bench.running(command, env, dirs, url) as server:
            bench.log("soak: spread, to set the rate")
            spread = bench.measure(server, "spread", duration_s=SPREAD_S)
            rps = max(1, round(spread["rps"] * RATE_FRACTION))
            bench.log(
                f"soak: mixed at {rps} calls/s ({RATE_FRACTION:g} × spread's "
                f"{spread['rps']:.0f}) for {count} windows of {window_s:g} s "
                f"(edges of {edge}); upkeep every {upkeep_s:g} s"
            )
            ghz_window(server.target, rps, WARMUP_S)
            asyncio.run(bench.analyze(url))
            rounds_before = upkeep_rounds(scrape(metrics_port))
            t0 = time.monotonic()
            windows: list[Window] = []
            extensions = 0
            with Sampler(server.pid, metrics_port, url, sample_s, t0) as sampler:
                planned = count
                i = 0
                while i < planned:
                    i += 1
                    w = run_window(i, server, rps, window_s, metrics_port, t0)
                    windows.append(w)
                    p99 = percentile(w.latencies_ms or [0.0], 0.99)
                    last = sampler.samples[-1] if sampler.samples else None
                    bench.log(
                        f"  window {w.index}/{planned}: {w.rps:.0f} calls/s, p99 {p99:.1f} ms, "
                        f"{w.errors} errors"
                        + (
                            f", RSS {last.rss_kib / 1024:.1f} MiB, {last.fds} fds, pool "
                            f"{last.pool_in_use:g}/{last.pool_size:g}"
                            if last
                            else ""
                        )
                        + f", others {w.others_cores} cores"
                    )
                    if i == planned and extensions < EXTENSIONS_MAX:
                        so_far = judge(
                            sampler.samples, windows, {"done": 1}, edge
                        )  # upkeep is judged at the end
                        if so_far.latency_failed_under_busier_neighbours:
                            extensions += 1
                            planned += edge
                            bench.log(
                                f"soak: p99 {so_far.figures['p99_ratio']:.2f}× the first "
                                f"edge's while the rest of the machine used "
                                f"{so_far.figures['others_cores_last']} cores against "
                                f"{so_far.figures['others_cores_first']}: {edge} windows "
                                f"more (extension {extensions} of {EXTENSIONS_MAX})"
                            )
            rounds_after = upkeep_rounds(scrape(metrics_port))
            samples = sampler.samples
    ran = {
        k: rounds_after.get(k, 0) - rounds_before.get(k, 0)
        for k in sorted(set(rounds_after) | set(rounds_before))
    }
    ran = {k: v for k, v in ran.items() if v}
    verdict = judge(samples, windows, ran, edge)
    rows = window_rows(samples, windows)
    return {
        "machine": bench.machine(),
        "settings": {
            "minutes": minutes,
            "window_s": window_s,
            "windows": len(windows),
            "extensions": extensions,
            "edge_windows": edge,
            "sample_every_s": sample_s,
            "upkeep_interval_s": upkeep_s,
            "rate_fraction": RATE_FRACTION,
            "database": "QUOTA_AUTHORITY_DATABASE_URL" if given_url else "embedded",
        },
        "spread": {k: spread[k] for k in ("rps", "p50_ms", "p99_ms", "errors")},
        "rate_rps": rps,
        "achieved_rps": round(
            sum(w.calls for w in windows) / sum(w.end_s - w.start_s for w in windows), 1
        ),
        "verdict": {
            "promises": [asdict(p) for p in verdict.promises],
            "notes": verdict.notes,
            "figures": verdict.figures,
        },
        "failed": [p.name for p in verdict.failed],
        "windows": rows,
        "samples": [asdict(s) for s in samples],
    }


def summary(result: dict[str, Any]) -> str:
    s = result["settings"]
    return (
        f"soak {result['machine']['date']}: {s['minutes']:g} min of mixed at "
        f"{result['rate_rps']} calls/s ({s['rate_fraction']:g} × spread's "
        f"{result['spread']['rps']:.0f}; achieved {result['achieved_rps']:.0f}), "
        f"{s['windows']} windows of {s['window_s']:g} s"
        + (
            f" ({s['extensions']} edge(s) added: the p99 promise failed under busier neighbours)"
            if s["extensions"]
            else ""
        )
        + f", edges of {s['edge_windows']} windows, upkeep every {s['upkeep_interval_s']:g} s, "
        f"{s['database']} PostgreSQL"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 30)))
    parser.add_argument("--window-s", type=float, help="each window (default: 10–30 s)")
    parser.add_argument("--upkeep-s", type=float, help="QUOTA_AUTHORITY_UPKEEP_INTERVAL_S")
    parser.add_argument(
        "--record", action="store_true", help="append the figure to .reliability/results.jsonl"
    )
    args = parser.parse_args(argv)
    if not bench.GHZ.exists():
        print(f"ghz not found at {bench.GHZ}; run `make soak`", file=sys.stderr)
        return 2
    result = soak(args.minutes, args.window_s, args.upkeep_s)
    lines = [summary(result), "", text_table(result["windows"]), ""]
    verdict = result["verdict"]
    promises = [Promise(**p) for p in verdict["promises"]]
    lines += verdict_lines(Verdict(promises, verdict["notes"], verdict["figures"]))
    print("\n".join(lines))
    bench.BENCH_DIR.mkdir(exist_ok=True)
    (bench.BENCH_DIR / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = [
        summary(result),
        "",
        markdown_table(result["windows"]),
        "",
        *(f"- {line}" for line in verdict_lines(Verdict(promises, verdict["notes"], {}))),
    ]
    (bench.BENCH_DIR / "soak.md").write_text("\n".join(markdown) + "\n")
    print(f"\nwritten to {bench.BENCH_DIR / 'soak.json'} and soak.md")
    if args.record:
        record(result)
    if result["failed"]:
        print(f"soak FAILED: {'; '.join(result['failed'])}", file=sys.stderr)
        return 1
    return 0


def record(result: dict[str, Any]) -> None:
    """The soak's figure, for RELIABILITY.md's table (scripts/reliability_report.py)."""
    f = result["verdict"]["figures"]
    s = result["settings"]
    figure = (
        f"{s['minutes']:g} min of mixed at {result['rate_rps']:,} calls/s (0.7 × spread), "
        f"{f['calls']:,} calls, {f['errors']} errors: RSS {f['rss_mib_at_edge']} → "
        f"{f['rss_mib_at_end']} MiB ({f['rss_growth']:+.1%}); p99 {f['p99_ms_first']} → "
        f"{f['p99_ms_last']} ms ({f['p99_ratio']:.2f}×); "
        + "; ".join(
            f"{p['name'].split(':')[0]}: {p['figure']}" for p in result["verdict"]["promises"][1:5]
        )
        + f"; upkeep rounds: {result['verdict']['promises'][-1]['figure']}"
        + (f"; FAILED: {', '.join(result['failed'])}" if result["failed"] else "")
    )
    RELIABILITY_RESULTS.parent.mkdir(exist_ok=True)
    entry = {
        "test": "soak",
        "figure": figure,
        "values": result["verdict"]["figures"],
        "scale": "full",
        "measured_at": result["machine"]["date"],
    }
    with RELIABILITY_RESULTS.open("a") as out:
        out.write(json.dumps(entry, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
