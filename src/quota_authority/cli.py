"""The ``quota-authority`` command: ``serve``, ``migrate`` and ``status SELLER_ID``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from .errors import ConfigError
from .logs import configure_logging
from .settings import Settings, load_settings
from .v1 import quota_authority_pb2 as pb

__all__ = ["main"]


def _migrate(settings: Settings) -> None:
    from .store import EmbeddedPostgres, create_engine, migrate

    async def run(url: str) -> str:
        engine = create_engine(url, settings)
        try:
            return await migrate(engine)
        finally:
            await engine.dispose()

    if settings.database_url is not None:
        revision = asyncio.run(run(settings.database_url))
    else:
        with EmbeddedPostgres(settings.data_dir) as embedded:
            revision = asyncio.run(run(embedded.url))
    print(f"schema at revision {revision}")


def _status(target: str, seller_id: str, token_file: Path | None, ca_file: Path | None) -> int:
    from .client import QuotaClient

    try:
        token = None if token_file is None else token_file.read_text().strip()
        root_certificates = None if ca_file is None else ca_file.read_bytes()
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    async def ask() -> pb.QuotaStatus:
        async with QuotaClient(
            target, token=token, root_certificates=root_certificates, timeout=10
        ) as client:
            return await client.get_status(seller_id)

    try:
        s = asyncio.run(ask())
    except grpc.aio.AioRpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    limit = "unlimited" if s.unlimited else str(s.weekly_limit)
    cap = str(s.max_creator_followers) if s.HasField("max_creator_followers") else "no cap"
    remaining = "unlimited" if s.unlimited else str(s.remaining_this_week)
    rows = [
        ("seller", s.seller_id),
        ("tier", s.tier),
        ("weekly limit", limit),
        ("used this week", str(s.used_this_week)),
        ("remaining this week", remaining),
        ("starter pack remaining", str(s.starter_pack_remaining)),
        ("max creator followers", cap),
        ("30-day GMV (USD)", f"{s.gmv_30d_minor / 100:,.2f}"),
        ("time zone", s.time_zone),
        ("week start", s.week_start.ToDatetime().isoformat() + "Z"),
        ("next refresh", s.next_refresh.ToDatetime().isoformat() + "Z"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quota-authority", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve gRPC (embedded PostgreSQL unless a URL is set)")
    commands.add_parser("migrate", help="bring the database schema to the latest revision")
    status = commands.add_parser("status", help="print a seller's quota status")
    status.add_argument("seller_id")
    status.add_argument(
        "--target", help="host:port of the server (default: QUOTA_AUTHORITY_LISTEN)"
    )
    status.add_argument(
        "--token-file", type=Path, help="file holding a bearer token of a 'reader' caller"
    )
    status.add_argument(
        "--ca-file", type=Path, help="CA bundle (PEM) to verify the server's TLS certificate"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    if args.command == "serve":
        from .server import serve

        serve(settings)
        return 0
    if args.command == "migrate":
        _migrate(settings)
        return 0
    return _status(args.target or settings.listen, args.seller_id, args.token_file, args.ca_file)


if __name__ == "__main__":
    sys.exit(main())
