"""PostgreSQL through SQLAlchemy Core on asyncpg: the tables, the migrations, and
``PostgresLedger``, which implements ``engine.ports.LedgerStore``."""

from .database import DatabaseLimits, EmbeddedPostgres, create_engine, to_async_url
from .ledger import PostgresLedger
from .migrate import head_revision, migrate

__all__ = [
    "DatabaseLimits",
    "EmbeddedPostgres",
    "PostgresLedger",
    "create_engine",
    "head_revision",
    "migrate",
    "to_async_url",
]
