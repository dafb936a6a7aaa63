"""Alembic environment: always run through ``store.migrate.migrate``, which hands over an
open connection (``config.attributes["connection"]``) inside its own transaction."""

from alembic import context

from quota_authority.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `quota-authority migrate`, not the alembic CLI")
context.configure(connection=connection, target_metadata=metadata)
context.run_migrations()
