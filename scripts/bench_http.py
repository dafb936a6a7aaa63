"""The HTTP/JSON side of ``make bench``'s ``http`` scenario: a small load driver, since ghz
speaks gRPC only.

``python scripts/bench_http.py PORT CALL DURATION_S CONNECTIONS OUTPUT`` drives the HTTP/JSON port
at 127.0.0.1:PORT with CONNECTIONS keep-alive connections, each one request at a time
(HTTP/1.1, no pipelining), for DURATION_S seconds, and writes its figures as JSON to the
file OUTPUT: requests, errors (any status but 200), and each latency in ms. CALL is ``GetStatus`` (a
spread seller's status) or ``CheckAndConsume`` (spread's load: a random seller of the
10,000 spread sellers, a random creator, an invite one time in ten, a fresh request_id).
``bench.measure_http`` runs several at once, as ghz runs several connections, and reads
each process's CPU as it does ghz's. The standard library and uvloop only: the request
bytes are written and the answer's head parsed by hand, so that the driver costs little
beside the server.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import uuid

__all__ = ["request_bytes"]

SPREAD_SELLERS = 10_000


def request_bytes(call: str) -> bytes:
    """One request of ``call``'s load."""
    seller = f"spread-{random.randrange(SPREAD_SELLERS):05d}"
    if call == "GetStatus":
        return (f"GET /v1/sellers/{seller}/status HTTP/1.1\r\nHost: bench\r\n\r\n").encode()
    invite = random.randrange(10) == 0
    body = json.dumps(
        {
            "creatorId": f"creator-{random.randrange(1_000_000)}",
            "action": "ACTION_INVITE" if invite else "ACTION_MESSAGE",
            "creatorFollowerCount": random.randrange(100, 20_000),
            "requestId": str(uuid.uuid4()),
        }
    ).encode()
    head = (
        f"POST /v1/sellers/{seller}:checkAndConsume HTTP/1.1\r\nHost: bench\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    port: int, call: str, until: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            started = time.perf_counter()
            writer.write(request_bytes(call))
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
            if not head.startswith(b"HTTP/1.1 200 "):
                errors.append(1)
                if b"connection: close" in head.lower():
                    return
    finally:
        writer.close()


async def drive(port: int, call: str, duration_s: float, connections: int) -> dict[str, object]:
    latencies: list[float] = []
    errors: list[int] = []
    started = time.monotonic()
    until = started + duration_s
    await asyncio.gather(
        *(_connection(port, call, until, latencies, errors) for _ in range(connections))
    )
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": time.monotonic() - started,
        "latencies_ms": latencies,
    }


def main() -> None:
    port, call, duration_s, connections, output = sys.argv[1:6]
    import uvloop

    result = uvloop.run(drive(int(port), call, float(duration_s), int(connections)))
    with open(output, "w", encoding="utf-8") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
