"""``quota-authority serve`` and ``migrate``: the server's own commands. They read the
settings (``QUOTA_AUTHORITY_*``), and a ``StartupError`` ends them with its one line on
stderr and its exit status (``errors.py`` gives each cause its status)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..errors import CannotDistribute, CannotListen, ConfigError, DatabaseUnreachable, StartupError
from ..logs import configure_logging
from ..settings import Settings, load_settings
from .shared import OK, Commands, ExitStatus, add_command

__all__ = ["add_parsers"]

_SERVE = """\
Serve gRPC (on the embedded PostgreSQL unless QUOTA_AUTHORITY_DATABASE_URL is set).
It migrates the database first, unless its schema is newer, and serves until SIGTERM or
SIGINT, with the settings of the QUOTA_AUTHORITY_* variables.
"""
_MIGRATE = """\
Bring the database schema to this release's newest revision, and print it and the database
(its URL without the password, or the embedded PostgreSQL's absolute data directory).
"""
_BAD_CONFIGURATION = ExitStatus(
    ConfigError.exit_status, "bad configuration", "bad configuration: the message names the key"
)
_DATABASE_UNREACHABLE = ExitStatus(
    DatabaseUnreachable.exit_status,
    "database unreachable",
    "the database could not be reached (QUOTA_AUTHORITY_DATABASE_URL, password hidden)",
)
_CANNOT_DISTRIBUTE = ExitStatus(
    CannotDistribute.exit_status,
    "cannot distribute",
    "QUOTA_AUTHORITY_DISTRIBUTE is true and Citus refused to distribute the schema",
)
_SERVE_STATUSES = (
    ExitStatus(OK, "stopped", "stopped gracefully (SIGTERM or SIGINT)"),
    _BAD_CONFIGURATION,
    _DATABASE_UNREACHABLE,
    ExitStatus(
        CannotListen.exit_status,
        "cannot listen",
        "QUOTA_AUTHORITY_LISTEN, QUOTA_AUTHORITY_HTTP_LISTEN or QUOTA_AUTHORITY_METRICS_LISTEN "
        "cannot be bound (in use, not this machine's, not permitted)",
    ),
    _CANNOT_DISTRIBUTE,
)
_MIGRATE_STATUSES = (
    ExitStatus(
        OK, "", "the schema is at this release's newest revision (printed, with the database)"
    ),
    _BAD_CONFIGURATION,
    _DATABASE_UNREACHABLE,
    _CANNOT_DISTRIBUTE,
)


def _start(action: Callable[[Settings], None]) -> int:
    """Run ``action`` with the settings; a ``StartupError`` is printed and is its status."""
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        action(settings)
    except StartupError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return e.exit_status
    return OK


def _serve(settings: Settings) -> None:
    from ..server import serve

    serve(settings)


def _migrate(settings: Settings) -> None:
    from ..server import migrate_schema

    revision, database = migrate_schema(settings)
    print(f"schema at revision {revision} in {database}")


def add_parsers(commands: Commands) -> None:
    """Add ``serve`` and ``migrate`` to ``commands``."""
    add_command(commands, "serve", lambda args: _start(_serve), _SERVE_STATUSES, about=_SERVE)
    add_command(
        commands, "migrate", lambda args: _start(_migrate), _MIGRATE_STATUSES, about=_MIGRATE
    )
