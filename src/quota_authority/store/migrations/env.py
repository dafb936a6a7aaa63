"""Alembic environment: always run through ``store.migrate.migrate``, which hands over an
open connection (``config.attributes["connection"]``) holding the migration lock. Each
revision runs in a transaction of its own, so that one may step outside it
(``op.get_context().autocommit_block()``, as 0008 does) without committing another's half."""

from alembic import context

from quota_authority.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `quota-authority migrate`, not the alembic CLI")
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
