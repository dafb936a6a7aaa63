"""The rules of docs/rules.md and the use cases that apply them; no gRPC, no SQL.

``weeks`` (R2) and ``rules`` (R1, R4–R10, R14, R15) are pure functions of their inputs. ``service``
runs each use case in one store transaction through the ``ports.LedgerStore`` interface,
which ``store`` implements.
"""

from .service import QuotaService

__all__ = ["QuotaService"]
