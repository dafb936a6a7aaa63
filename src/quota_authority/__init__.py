"""quota-authority: the single authority on affiliate outreach quotas, served over gRPC.

Layers, imported in one direction only::

    api      gRPC servicer: protobuf <-> domain, input validation, error mapping
      |
    engine   the rules of docs/rules.md (pure Python) and the use cases that apply them
      |
    store    PostgreSQL through SQLAlchemy Core: tables, transactions, locks

``domain``, ``errors``, ``clock`` and ``settings`` are shared by all three.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
