"""``IgnoresTimeouts``: transactions wait for locks and run statements without a limit.

It breaks the promise the lock-timeout tests (9) guard: no lock wait and no statement
outlasts the lock timeout, the statement timeout or the caller's deadline.
"""

from __future__ import annotations

from quota_authority.store import PostgresLedger

__all__ = ["IgnoresTimeouts"]


class IgnoresTimeouts(PostgresLedger):
    """Lock waits and statements without a limit in every transaction: the session's
    ``lock_timeout`` and ``statement_timeout`` and the caller's deadline all ignored."""

    def _timeouts_ms(self, timeout_s: float | None) -> tuple[int, int]:
        return (0, 0)  # PostgreSQL's 0: no limit
