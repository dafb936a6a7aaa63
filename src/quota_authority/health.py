"""gRPC health checking (``grpc.health.v1.Health``) that lets a server stop on time.

grpc's reference servicer keeps every ``Watch`` stream open until the client leaves, so a
load balancer watching health would hold a stopping server for its whole grace period.
Here ``close_watches`` ends them: each watcher is sent the last status (NOT_SERVING, once
the server is stopping), then its stream ends with OK; a watch opened later ends at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health, health_pb2

__all__ = ["HealthServicer"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc's servicer, whose ``Check``, ``set`` and ``enter_graceful_shutdown`` it keeps,
    with a ``Watch`` of its own that ``close_watches`` ends. The statuses it watches are
    kept here, beside grpc's, under the same rules: after ``enter_graceful_shutdown``
    everything is NOT_SERVING for good."""

    def __init__(self) -> None:
        super().__init__()
        self._statuses: dict[str, Any] = {"": _SERVING}
        self._stopping = False
        self._closed = False
        self._changed = asyncio.Condition()

    async def set(self, service: str, status: Any) -> None:
        await super().set(service, status)
        if not self._stopping:
            await self._change({**self._statuses, service: status})

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._stopping = True
        await self._change(dict.fromkeys(self._statuses, _NOT_SERVING))

    async def close_watches(self) -> None:
        """End every ``Watch`` stream, open now or opened later, after its last status."""
        self._closed = True
        await self._change(self._statuses)

    async def _change(self, statuses: dict[str, Any]) -> None:
        async with self._changed:
            self._statuses = statuses
            self._changed.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        sent = None
        while True:
            async with self._changed:
                # Wait for news; the lock is not held while writing to a slow client.
                while self._statuses.get(request.service, _UNKNOWN) == sent and not self._closed:
                    await self._changed.wait()
                status = self._statuses.get(request.service, _UNKNOWN)
                closed = self._closed
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if closed:
                return
