"""The ``quota-authority`` command: the server's ``serve`` and ``migrate``, and the
operator's client commands, which call a running server through ``quota_authority.client``
like any other caller.

One module a command (``serve`` for serve and migrate, ``blocks`` for block and unblock);
``shared`` holds what they share: exit statuses, connection options, ``with_client``, the
argparse number type and the table printer. Each command module's ``add_parser`` adds it
with ``shared.add_command``, which records on its parser the function that runs it, the
role its calls need and the exit statuses it may end with; ``main`` dispatches on them.
"""

from __future__ import annotations

import os

# Before anything imports grpc, which reads it once: no gRPC fork handlers in the command's
# processes. The only forks are subprocesses that exec at once (pgserver's pg_ctl, the
# embedded PostgreSQL's watchdog), which need none; as root, pgserver's pg_ctl runs with
# user=, for which Python forks rather than vforks, and the handlers then wrote
# "fork_posix.cc:71] Other threads are currently calling into gRPC, skipping fork()
# handlers" on stderr, among the JSON log lines, or restarted gRPC's threads in the child
# (tests/servers.py saw one crash before its exec).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata

from . import (
    adjust,
    audit,
    blocks,
    check,
    check_batch,
    confirm,
    health,
    import_gmv,
    record_reply,
    release,
    serve,
    status,
    storage,
    upsert_seller,
)
from .shared import OUTPUT_CLOSED, Commands, ExitStatus, UsageError

__all__ = ["CommandFacts", "command_facts", "main"]

_DESCRIPTION = """\
The server: serve and migrate, and storage, which reads the database itself. The
operator's client: status, check, check-batch, release, confirm, adjust, block, unblock,
record-reply, upsert-seller, import-gmv and audit, which share the connection options --target,
--token-file and --ca-file. health, a probe: exit 0 when the server reports SERVING.
'quota-authority COMMAND --help' has each command's options and exit statuses. Into a pipe
whose reader has gone (a pipe into head that has its lines), any command stops quietly with
exit status 141, as Unix tools do.
"""


def _version() -> str:
    try:
        return metadata.version("quota-authority")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _parser() -> tuple[argparse.ArgumentParser, Commands]:
    """The command's parser, and the action that holds its subcommands."""
    parser = argparse.ArgumentParser(
        prog="quota-authority",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_parsers(commands)
    storage.add_parser(commands)
    status.add_parser(commands)
    check.add_parser(commands)
    check_batch.add_parser(commands)
    release.add_parser(commands)
    confirm.add_parser(commands)
    adjust.add_parser(commands)
    blocks.add_parsers(commands)
    record_reply.add_parser(commands)
    upsert_seller.add_parser(commands)
    import_gmv.add_parser(commands)
    audit.add_parser(commands)
    health.add_parser(commands)
    return parser, commands


@dataclass(frozen=True)
class CommandFacts:
    """What a command declares: the role its calls need (None for serve and migrate) and
    the exit statuses it may end with."""

    role: str | None
    statuses: tuple[ExitStatus, ...]


def command_facts() -> dict[str, CommandFacts]:
    """Each command's declared facts, by name: what its ``--help`` says, and what
    docs/operations.md's table of commands must say."""
    _, commands = _parser()
    return {
        name: CommandFacts(parser.get_default("role"), parser.get_default("statuses"))
        for name, parser in commands.choices.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command that ``argv`` (default: the process's arguments) names; its exit
    status. Usage errors exit through argparse (``SystemExit(2)``).

    When stdout's reader has gone (``quota-authority audit s1 | head -1``: EPIPE), the
    command stops quietly, as Unix tools do, with ``OUTPUT_CLOSED`` (141, what a shell
    reports for a tool that SIGPIPE ended); a command that made a change has said on stderr
    how to see its answer again (``shared.answer_of``). stdout is flushed here, so that an
    EPIPE on the last lines ends the command here too rather than at the interpreter's
    exit (status 120, "Exception ignored")."""
    try:
        try:
            code = _run(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return OUTPUT_CLOSED
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser, _ = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except UsageError as e:
        args.command_parser.error(str(e))
    return code


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for the pipe that broke goes
    nowhere at exit instead of failing again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (a test's capture)
        pass
