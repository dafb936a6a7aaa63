"""Prometheus metrics, served on ``QUOTA_AUTHORITY_METRICS_LISTEN`` when it is set.

============================================  =========  ===================================
metric                                        type       labels
============================================  =========  ===================================
quota_authority_decisions_total               counter    action, reason, allowed
quota_authority_rpc_duration_seconds          histogram  method, code
quota_authority_db_transaction_seconds        histogram  kind (outreach: a batch; other)
quota_authority_db_pool_connections_in_use    gauge
quota_authority_batch_size                    histogram  (CheckAndConsume calls a batch)
quota_authority_gmv_rows_recorded_total       counter    (RecordGmv and BatchRecordGmv rows)
quota_authority_outreach_calls_waiting        gauge
quota_authority_outreach_batches_total        counter    applied (BatchCheckAndConsume calls)
quota_authority_releases_total                counter    returned (weekly, starter_pack, none)
quota_authority_storage_upkeep_rounds_total   counter    outcome (done, skipped, failed)
quota_authority_db_pool_size                  gauge      (QUOTA_AUTHORITY_DB_POOL_SIZE)
quota_authority_batch_max_size                gauge      (QUOTA_AUTHORITY_BATCH_MAX_SIZE)
quota_authority_lock_timeout_seconds          gauge      (QUOTA_AUTHORITY_LOCK_TIMEOUT_MS)
============================================  =========  ===================================

The last three are the process's configured limits, so that alerting rules
(deploy/prometheus/quota-authority.rules.yaml) compare the pool, the batches and the
transactions with each replica's own settings rather than with numbers copied into them.

Each server has a registry of its own, so several servers in one process (tests) never mix
their figures. The layers stay unaware of Prometheus: the servicer, the batcher and the
store are handed plain callables, or wrapped (``TimedLedger``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .domain import HoldState
from .engine.ports import (
    LedgerStore,
    LedgerTransaction,
    OutreachTransaction,
    TransactionGrouping,
    UpkeepReport,
)
from .engine.retention import Retained

__all__ = ["Metrics", "TimedLedger"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The service's metrics on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._decisions = Counter(
            "quota_authority_decisions",
            "Decisions of CheckAndConsume and of batch items, allowed or denied, by action "
            "and reason.",
            ["action", "reason", "allowed"],
            registry=self.registry,
        )
        self._rpc = Histogram(
            "quota_authority_rpc_duration_seconds",
            "Time to answer an RPC, by method and status code.",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._transactions = Histogram(
            "quota_authority_db_transaction_seconds",
            "Time a database transaction was open, by kind (outreach: a batch).",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._pool = Gauge(
            "quota_authority_db_pool_connections_in_use",
            "Database connections checked out of the pool.",
            registry=self.registry,
        )
        self._waiting = Gauge(
            "quota_authority_outreach_calls_waiting",
            "CheckAndConsume calls received and not yet answered: queued for a batch or in one.",
            registry=self.registry,
        )
        self._outreach_batches = Counter(
            "quota_authority_outreach_batches",
            "BatchCheckAndConsume calls decided (not replayed), by whether they were applied.",
            ["applied"],
            registry=self.registry,
        )
        self._releases = Counter(
            "quota_authority_releases",
            "ReleaseOutreach calls that released (not replayed), by the pool given the unit.",
            ["returned"],
            registry=self.registry,
        )
        self._holds = Counter(
            "quota_authority_holds",
            "Holds (R16) ended, by how: confirmed, voided (released) or expired.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("confirmed", "voided", "expired"):
            self._holds.labels(outcome)  # listed at 0 before the first
        self._gmv_rows = Counter(
            "quota_authority_gmv_rows_recorded",
            "GMV rows applied by RecordGmv and BatchRecordGmv (replays not counted).",
            registry=self.registry,
        )
        self._batch = Histogram(
            "quota_authority_batch_size",
            "CheckAndConsume calls decided in one transaction.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._upkeep_rounds = Counter(
            "quota_authority_storage_upkeep_rounds",
            "Rounds of storage upkeep (partitions and retention), by outcome: done, skipped "
            "(another replica held the upkeep lock) or failed.",
            ["outcome"],
            registry=self.registry,
        )
        self._pool_size = Gauge(
            "quota_authority_db_pool_size",
            "Database connections the pool may hold (QUOTA_AUTHORITY_DB_POOL_SIZE).",
            registry=self.registry,
        )
        self._batch_max_size = Gauge(
            "quota_authority_batch_max_size",
            "Most CheckAndConsume calls in one batch (QUOTA_AUTHORITY_BATCH_MAX_SIZE).",
            registry=self.registry,
        )
        self._lock_timeout = Gauge(
            "quota_authority_lock_timeout_seconds",
            "Longest wait for a row lock before UNAVAILABLE (QUOTA_AUTHORITY_LOCK_TIMEOUT_MS).",
            registry=self.registry,
        )

    def limits(self, *, pool_size: int, batch_max_size: int, lock_timeout_s: float) -> None:
        """The configured limits the alerting rules compare with, set once at start."""
        self._pool_size.set(pool_size)
        self._batch_max_size.set(batch_max_size)
        self._lock_timeout.set(lock_timeout_s)

    def batch_decided(self, decisions: list[tuple[str, str, bool]], applied: bool) -> None:
        """One BatchCheckAndConsume: each item (action, reason, allowed) is a decision."""
        for action, reason, allowed in decisions:
            self.decision(action, reason, allowed)
        self._outreach_batches.labels("true" if applied else "false").inc()

    def release(self, returned: str) -> None:
        """One ReleaseOutreach that gave ``returned``'s pool its unit back (or none)."""
        self._releases.labels(returned).inc()

    def hold_resolved(self, outcome: HoldState) -> None:
        """One hold (R16) ended: confirmed, voided or expired."""
        self._holds.labels(outcome.value).inc()

    def gmv_rows_recorded(self, rows: int) -> None:
        """``rows`` GMV rows applied by one RecordGmv (1) or BatchRecordGmv."""
        self._gmv_rows.inc(rows)

    def upkeep_round(self, outcome: str) -> None:
        """One round of storage upkeep ended: ``done``, ``skipped`` or ``failed``."""
        self._upkeep_rounds.labels(outcome).inc()

    def decision(self, action: str, reason: str, allowed: bool) -> None:
        self._decisions.labels(action, reason, "true" if allowed else "false").inc()

    def rpc(self, method: str, code: str, seconds: float) -> None:
        self._rpc.labels(method, code).observe(seconds)

    def transaction(self, kind: str, seconds: float) -> None:
        self._transactions.labels(kind).observe(seconds)

    def batch(self, size: int) -> None:
        self._batch.observe(size)

    def pool_in_use(self, read: Callable[[], float]) -> None:
        """Read the pool's connections in use with ``read`` at every scrape."""
        self._pool.set_function(read)

    def outreach_waiting(self, read: Callable[[], float]) -> None:
        """Read the CheckAndConsume calls waiting with ``read`` at every scrape."""
        self._waiting.set_function(read)

    def serve(self, listen: str) -> Any:
        """Serve ``/metrics`` on ``listen`` (host:port, port 0 picks one) from a thread; the
        HTTP server (``.server_port``, ``.shutdown()``)."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), host.strip("[]"), self.registry)
        return server


class TimedLedger:
    """``ledger``, with the time each transaction is open observed."""

    def __init__(self, ledger: LedgerStore, metrics: Metrics) -> None:
        self._ledger = ledger
        self._metrics = metrics

    @asynccontextmanager
    async def _timed(
        self, kind: str, transaction: AbstractAsyncContextManager[Any]
    ) -> AsyncIterator[Any]:
        started = time.perf_counter()
        try:
            async with transaction as tx:
                yield tx
        finally:
            self._metrics.transaction(kind, time.perf_counter() - started)

    async def transaction_grouping(self) -> TransactionGrouping:
        return await self._ledger.transaction_grouping()

    def transaction(
        self, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[LedgerTransaction]:
        return self._timed("other", self._ledger.transaction(timeout_s))

    def outreach_transaction(
        self, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[OutreachTransaction]:
        return self._timed("outreach", self._ledger.outreach_transaction(timeout_s))

    async def keep_bounded(
        self, now: datetime, keep: Retained, *, trim_rows: bool = True
    ) -> UpkeepReport | None:
        return await self._ledger.keep_bounded(now, keep, trim_rows=trim_rows)

    async def ping(self) -> bool:
        return await self._ledger.ping()
