"""A plain HTTP client for the HTTP/JSON port's tests: the standard library's
``http.client``, each request run in a thread, since the server under test serves in the
tests' own event loop."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from dataclasses import dataclass
from typing import Any

__all__ = ["HttpAnswer", "http_call"]


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: Any  # the JSON body, decoded; the raw text when it is not JSON

    def violations(self) -> dict[str, str]:
        """The error's field violations (google.rpc.BadRequest), field -> description."""
        return {
            v["field"]: v["description"]
            for detail in self.body.get("details", [])
            if detail["@type"].endswith("google.rpc.BadRequest")
            for v in detail["fieldViolations"]
        }

    def reason(self) -> str | None:
        """The error's google.rpc.ErrorInfo reason, if it has one."""
        for detail in self.body.get("details", []):
            if detail["@type"].endswith("google.rpc.ErrorInfo"):
                return str(detail["reason"])
        return None


def _blocking(
    port: int,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    tls: ssl.SSLContext | None,
) -> HttpAnswer:
    connection: http.client.HTTPConnection
    if tls is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=tls)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        answered = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    try:
        decoded: Any = json.loads(raw)
    except ValueError:
        decoded = raw.decode(errors="replace")
    return HttpAnswer(response.status, answered, decoded)


async def http_call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    tls: ssl.SSLContext | None = None,
) -> HttpAnswer:
    """``method path`` on the HTTP/JSON port at 127.0.0.1:``port``, with ``body`` as JSON
    (or ``raw`` bytes), a bearer ``token`` and any other ``headers``."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    return await asyncio.to_thread(_blocking, port, method, path, data, sent, tls)
