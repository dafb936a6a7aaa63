"""The benchmark's baseline: our service with no work behind it.

CheckAndConsume answers a constant response of realistic size (every field set, as a charged
decision has them). Everything else is the real server's: ``new_grpc_server`` (gRPC options)
and ``run_event_loop`` (event loop) from ``quota_authority.server``, and the same settings
from the environment — so a benchmark ratio measures only the work our server does per call.

Usage: ``python scripts/baseline_server.py`` (listens on ``QUOTA_AUTHORITY_LISTEN``).
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from quota_authority.server import new_grpc_server, run_event_loop
from quota_authority.settings import Settings, load_settings
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc


def _timestamp(instant: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


RESPONSE = pb.CheckAndConsumeResponse(
    allowed=True,
    reason=pb.REASON_NEW_CREATOR,
    charged=pb.CHARGE_WEEKLY,
    status=pb.QuotaStatus(
        seller_id="spread-04711",
        tier="T1",
        unlimited=False,
        weekly_limit=200,
        used_this_week=17,
        remaining_this_week=183,
        starter_pack_remaining=0,
        max_creator_followers=20_000,
        week_start=_timestamp(datetime(2026, 11, 22, tzinfo=UTC)),
        next_refresh=_timestamp(datetime(2026, 11, 29, tzinfo=UTC)),
        gmv_30d_minor=123_456,
        time_zone="UTC",
    ),
    messages_before_reply_remaining=4,
)


class BaselineServicer(pb_grpc.QuotaAuthorityServiceServicer):
    async def CheckAndConsume(
        self, request: pb.CheckAndConsumeRequest, context: Any
    ) -> pb.CheckAndConsumeResponse:
        return RESPONSE


async def _serve(settings: Settings) -> None:
    server = new_grpc_server(settings)
    # The other RPCs stay unimplemented: only CheckAndConsume is measured.
    pb_grpc.add_QuotaAuthorityServiceServicer_to_server(
        BaselineServicer(),  # type: ignore[abstract]
        server,
    )
    if server.add_insecure_port(settings.listen) == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    await server.start()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    print(f"baseline serving on {settings.listen}", flush=True)
    await stopping.wait()
    await server.stop(1)


if __name__ == "__main__":
    settings = load_settings()
    run_event_loop(settings, _serve(settings))
