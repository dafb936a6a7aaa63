"""Deliberately broken variants of the ledger (reliability item 14; RELIABILITY.md).

A reliability test that cannot fail proves nothing: each test of the suite is also run
against a variant that breaks the promise it checks, and must fail there. A variant is a
``ledger`` factory, ``(engine, limits) -> LedgerStore``, for ``start_server(ledger=...)``
or ``servers.replicas(start_server, ledger=...)``: the real ``PostgresLedger`` with one
thing taken away, everything else unchanged. Each module breaks one promise:

=====================  ===================================================  ===========
module                 the variant breaks                                   caught by
=====================  ===================================================  ===========
``no_lock``            decisions made under the seller-week lock            1, 2
``no_idempotency``     a retry replays the stored answer (R11)              3, 4
``cached_blocks``      a blocked pair gets no outreach (R8)                 7
``fail_open``          never grant when unsure                              5, 6
``leaks_on_failure``   a failed transaction gives its connection back       8
``ignores_timeouts``   no lock wait or statement outlasts its limit         9
``unlocked_expiry``    an expiry (R16) takes the seller-week lock           1 (holds)
=====================  ===================================================  ===========

A variant subclasses ``PostgresLedger`` and overrides public methods (calling ``super()``)
or its documented protected seam (``_timeouts_ms``, ``_connection``: see its docstring),
never other private names of the store. Add your own the same way, one promise a module.

The races ``no_lock``, ``no_idempotency`` and ``unlocked_expiry`` open only show when
decisions really race in PostgreSQL: with one server and one batch in flight, the batcher
serialises every decision in-process. So their tests run the service as
``servers.replicas``: two servers on one database, two batches in flight each, clients
spread over both.
"""
