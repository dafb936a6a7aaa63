"""The HTTP/JSON port (QUOTA_AUTHORITY_HTTP_LISTEN, docs/http.md), through a real server on
loopback and a plain HTTP client (``http.client``): every RPC at the path the proto's
google.api.http option names, every kind of error as a google.rpc.Status in JSON with the
HTTP status grpc-gateway gives its code, authentication and roles, the limits, the caller's
deadline, and one ledger with the gRPC port (a request_id is one decision over both)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from typing import Any

import grpc
import pytest
from http_json import HttpAnswer, http_call
from pki import Authority
from support import eventually, ledger_counts, new_id, seller_week_locked, waiting_calls

from quota_authority.api.callers import Caller
from quota_authority.api.http_routes import HTTP_STATUS, routes
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

READER = "r" * 32
OUTREACH = "o" * 32


@pytest.fixture(scope="module")
async def open_server(start_server: Any) -> tuple[int, str]:
    """A server without callers (loopback): the HTTP port and the gRPC address."""
    server, address = await start_server(http_listen="127.0.0.1:0")
    return server.http_port, address


@pytest.fixture(scope="module")
async def guarded_port(start_server: Any) -> int:
    """A server with callers: a reader and an outreach caller, by token."""
    server, _ = await start_server(
        http_listen="127.0.0.1:0",
        callers=(
            Caller("dashboards", frozenset({"reader"}), token=READER),
            Caller("invites", frozenset({"outreach"}), token=OUTREACH),
        ),
    )
    port: int = server.http_port
    return port


def _check(seller: str, creator: str, **fields: Any) -> dict[str, Any]:
    return {"creatorId": creator, "action": "ACTION_INVITE", "creatorFollowerCount": 100, **fields}


# --- every RPC ---------------------------------------------------------------------------


def test_every_rpc_has_a_route() -> None:
    served = {route.rpc for route in routes()}
    assert served == set(pb.DESCRIPTOR.services_by_name["QuotaAuthorityService"].methods_by_name)


async def test_every_rpc_is_served_over_http(open_server: tuple[int, str]) -> None:
    port, _ = open_server
    seller = new_id("seller")
    path = f"/v1/sellers/{seller}"

    upserted = await http_call(port, "PUT", path, {"timeZone": "UTC"})
    gmv = await http_call(port, "POST", f"{path}:recordGmv", {"day": "2026-11-20", "gmvMinor": 0})
    rows = await http_call(
        port,
        "POST",
        "/v1/gmv:batchRecord",
        {"rows": [{"sellerId": seller, "day": "2026-11-21", "gmvMinor": "0"}]},
    )
    granted = await http_call(
        port, "POST", f"{path}:checkAndConsume", _check(seller, "c-1", requestId="r-1")
    )
    batch = await http_call(
        port,
        "POST",
        f"{path}:batchCheckAndConsume",
        {
            "items": [{"creatorId": "c-2", "action": "ACTION_MESSAGE"}],
            "mode": "BATCH_MODE_BEST_EFFORT",
            "requestId": "b-1",
        },
    )
    released = await http_call(port, "POST", f"{path}:releaseOutreach", {"requestId": "r-1"})
    confirmed = await http_call(port, "POST", f"{path}:confirmOutreach", {"requestId": "r-1"})
    replied = await http_call(
        port,
        "POST",
        f"{path}:recordReply",
        {"creatorId": "c-2", "source": "CONNECTION_SOURCE_REPLY"},
    )
    blocked = await http_call(
        port, "POST", f"{path}:block", {"creatorId": "c-3", "blockedBy": "PARTY_SELLER"}
    )
    unblocked = await http_call(
        port, "POST", f"{path}:unblock", {"creatorId": "c-3", "blockedBy": "PARTY_SELLER"}
    )
    status = await http_call(port, "GET", f"{path}/status")
    listed = await http_call(port, "GET", f"{path}/decisions?pageSize=2")
    rest = await http_call(
        port, "GET", f"{path}/decisions?page_size=2&pageToken={listed.body['nextPageToken']}"
    )

    answers = [upserted, gmv, rows, granted, batch, released, confirmed, replied, blocked]
    answers.append(unblocked)
    assert [a.status for a in [*answers, status, listed, rest]] == [200] * 13
    assert upserted.body == {"created": True, "timeZone": "UTC", "replayed": False}
    assert gmv.body == {"replayed": False}
    assert rows.body == {"rowsRecorded": 1, "replayed": False}
    assert granted.body["allowed"] is True
    assert granted.body["reason"] == "REASON_NEW_CREATOR"
    assert granted.body["status"]["sellerId"] == seller
    assert batch.body["results"][0]["allowed"] is True
    assert released.body["returned"] in ("CHARGE_WEEKLY", "CHARGE_STARTER_PACK")
    # R16: r-1 asked no hold: final already (its release is R14's, not a hold's).
    assert confirmed.body["state"] == "HOLD_STATE_NOT_HELD"
    assert replied.body == {"newlyConnected": True, "replayed": False}
    assert blocked.body["blockedBySeller"] is True
    assert unblocked.body["blockedBySeller"] is False
    assert status.body["status"]["usedThisWeek"] == "1"  # c-1 granted and released; c-2
    decisions = listed.body["decisions"] + rest.body["decisions"]
    # The grant, its release and the batch are listed; at one instant (the fake clock stands
    # still) their order is the ids', which on Citus depends on the node that wrote them.
    listed_ids = [d["requestId"] for d in decisions]
    assert listed_ids.count("r-1") == 2 and "b-1" in listed_ids, listed_ids
    assert status.headers["content-type"] == "application/json"


async def test_a_denial_is_an_answer_with_every_field_written(open_server: tuple[int, str]) -> None:
    port, _ = open_server
    seller = new_id("seller")
    path = f"/v1/sellers/{seller}"
    await http_call(
        port, "POST", f"{path}:block", {"creatorId": "c-1", "blockedBy": "PARTY_SELLER"}
    )

    denied = await http_call(port, "POST", f"{path}:checkAndConsume", _check(seller, "c-1"))

    assert denied.status == 200
    assert denied.body["allowed"] is False
    assert denied.body["reason"] == "REASON_BLOCKED_BY_SELLER"


async def test_one_request_id_is_one_decision_over_http_and_grpc(
    open_server: tuple[int, str],
) -> None:
    port, address = open_server
    seller = new_id("seller")
    over_http = await http_call(
        port,
        "POST",
        f"/v1/sellers/{seller}:checkAndConsume",
        _check(seller, "c-1", requestId="r-1"),
    )
    async with grpc.aio.insecure_channel(address) as channel:
        over_grpc = await pb_grpc.QuotaAuthorityServiceStub(channel).CheckAndConsume(
            pb.CheckAndConsumeRequest(
                seller_id=seller,
                creator_id="c-1",
                action=pb.ACTION_INVITE,
                creator_follower_count=100,
                request_id="r-1",
            ),
            timeout=10,
        )
        status = await pb_grpc.QuotaAuthorityServiceStub(channel).GetStatus(
            pb.GetStatusRequest(seller_id=seller), timeout=10
        )

    assert over_http.body["replayed"] is False
    assert over_grpc.replayed
    assert pb.Reason.Name(over_grpc.reason) == over_http.body["reason"]
    assert status.status.used_this_week == 1


# --- errors ------------------------------------------------------------------------------


def _is_status(answer: HttpAnswer, code: int) -> None:
    assert answer.status == HTTP_STATUS[code], answer
    assert answer.body["code"] == code
    assert answer.body["message"]


async def test_a_bad_field_is_400_invalid_argument_naming_it(open_server: tuple[int, str]) -> None:
    port, _ = open_server
    answer = await http_call(
        port,
        "POST",
        "/v1/sellers/s-1:checkAndConsume",
        {"creatorId": "c-1", "action": "ACTION_INVITE"},
    )

    _is_status(answer, 3)
    assert answer.status == 400
    assert set(answer.violations()) == {"creator_follower_count"}


async def test_not_found_and_failed_precondition_carry_their_reason(
    open_server: tuple[int, str],
) -> None:
    port, _ = open_server
    seller = new_id("seller")
    path = f"/v1/sellers/{seller}"
    unknown = await http_call(port, "POST", f"{path}:releaseOutreach", {"requestId": "never"})
    await http_call(port, "POST", f"{path}:checkAndConsume", _check(seller, "c-1", requestId="r"))
    reused = await http_call(
        port, "POST", f"{path}:checkAndConsume", _check(seller, "c-2", requestId="r")
    )

    _is_status(unknown, 5)
    assert unknown.status == 404
    assert unknown.reason() == "OUTREACH_NOT_FOUND"
    _is_status(reused, 9)
    assert reused.status == 400
    assert reused.reason() == "REQUEST_ID_REUSED"


async def test_malformed_json_and_unknown_fields_are_400(open_server: tuple[int, str]) -> None:
    port, _ = open_server
    path = "/v1/sellers/s-1:checkAndConsume"
    not_json = await http_call(port, "POST", path, raw=b"{not json")
    unknown = await http_call(port, "POST", path, {"creatorId": "c", "colour": "blue"})
    wrong_type = await http_call(port, "POST", path, {"creatorId": 7})
    array = await http_call(port, "POST", path, raw=b"[1, 2]")
    conflict = await http_call(port, "POST", path, {"sellerId": "s-2"})
    query = await http_call(port, "GET", "/v1/sellers/s-1/decisions?colour=blue")

    for answer in (not_json, unknown, wrong_type, array, conflict, query):
        _is_status(answer, 3)
    assert "request" in not_json.violations()
    assert "colour" in unknown.violations()["request"]
    assert "seller_id" in conflict.violations()
    assert "colour" in query.violations()["request"]


async def test_wrong_paths_are_404_and_wrong_methods_405(open_server: tuple[int, str]) -> None:
    port, _ = open_server
    missing = await http_call(port, "GET", "/v1/nothing")
    wrong_verb = await http_call(port, "POST", "/v1/sellers/s-1:explode", {})
    wrong_method = await http_call(port, "GET", "/v1/sellers/s-1:checkAndConsume")

    assert (missing.status, missing.body["code"]) == (404, 5)
    assert wrong_verb.status == 404
    assert (wrong_method.status, wrong_method.headers["allow"]) == (405, "POST")


async def test_a_caller_deadline_from_grpc_timeout(open_server: tuple[int, str]) -> None:
    port, _ = open_server
    path = f"/v1/sellers/{new_id('seller')}/status"
    passed = await http_call(port, "GET", path, headers={"Grpc-Timeout": "1n"})
    ample = await http_call(port, "GET", path, headers={"Grpc-Timeout": "30S"})
    bad = await http_call(port, "GET", path, headers={"Grpc-Timeout": "soon"})

    _is_status(passed, 4)
    assert passed.status == 504
    assert ample.status == 200
    _is_status(bad, 3)
    assert "grpc-timeout" in bad.violations()


async def test_a_body_over_the_message_limit_is_413_resource_exhausted(
    start_server: Any,
) -> None:
    server, _ = await start_server(http_listen="127.0.0.1:0", max_message_bytes=1024)
    answer = await http_call(
        server.http_port,
        "POST",
        "/v1/sellers/s-1:checkAndConsume",
        {"creatorId": "c" * 2000},
    )
    await server.stop(grace=0)

    assert answer.status == 413
    assert answer.body["code"] == 8  # RESOURCE_EXHAUSTED
    assert "QUOTA_AUTHORITY_MAX_MESSAGE_BYTES" in answer.body["message"]


# --- authentication and roles ------------------------------------------------------------


async def test_no_or_a_wrong_token_is_401(guarded_port: int) -> None:
    path = f"/v1/sellers/{new_id('seller')}/status"
    none = await http_call(guarded_port, "GET", path)
    wrong = await http_call(guarded_port, "GET", path, token="w" * 32)
    not_bearer = await http_call(guarded_port, "GET", path, headers={"Authorization": "Basic x"})

    for answer in (none, wrong, not_bearer):
        _is_status(answer, 16)
        assert answer.status == 401
        assert answer.headers["www-authenticate"] == "Bearer"


async def test_a_caller_without_the_role_is_403_and_changes_nothing(guarded_port: int) -> None:
    seller = new_id("seller")
    refused = await http_call(
        guarded_port,
        "POST",
        f"/v1/sellers/{seller}:checkAndConsume",
        _check(seller, "c-1"),
        token=READER,
    )
    status = await http_call(guarded_port, "GET", f"/v1/sellers/{seller}/status", token=READER)
    granted = await http_call(
        guarded_port,
        "POST",
        f"/v1/sellers/{seller}:checkAndConsume",
        _check(seller, "c-1"),
        token=OUTREACH,
    )

    _is_status(refused, 7)
    assert refused.status == 403
    assert "outreach" in refused.body["message"]
    assert status.body["status"]["usedThisWeek"] == "0"
    assert granted.body["allowed"] is True


async def test_health_needs_no_credentials(guarded_port: int) -> None:
    health = await http_call(guarded_port, "GET", "/healthz")

    assert (health.status, health.body) == (200, {"status": "SERVING"})


async def test_mutual_tls_identifies_the_caller_by_its_certificate(
    start_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    authority = Authority(tmp_path_factory.mktemp("pki"))
    server_cert = authority.issue("quota-authority.test", server=True)
    server, _ = await start_server(
        http_listen="127.0.0.1:0",
        callers=(
            Caller("invites", frozenset({"outreach"}), certificate_identity="invites.internal"),
        ),
        tls_cert_file=server_cert.cert_file,
        tls_key_file=server_cert.key_file,
        tls_client_ca_file=authority.cert_file,
    )
    seller = new_id("seller")

    def client(name: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=authority.cert_file)
        if name is not None:
            issued = authority.issue(name)
            context.load_cert_chain(issued.cert_file, issued.key_file)
        return context

    path = f"/v1/sellers/{seller}"
    granted = await http_call(
        server.http_port,
        "POST",
        f"{path}:checkAndConsume",
        _check(seller, "c-1"),
        tls=client("invites.internal"),
    )
    not_its_role = await http_call(
        server.http_port, "GET", f"{path}/status", tls=client("invites.internal")
    )
    stranger = await http_call(
        server.http_port,
        "POST",
        f"{path}:checkAndConsume",
        _check(seller, "c-2"),
        tls=client("stranger.internal"),
    )
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await http_call(server.http_port, "GET", f"{path}/status", tls=client(None))
    await server.stop(grace=0)

    assert granted.body["allowed"] is True
    assert not_its_role.status == 403
    assert stranger.status == 403


async def test_calls_over_the_concurrency_limit_are_429_at_once(start_server: Any, db: Any) -> None:
    """One call held in flight (its seller-week locked in the database) fills a limit of one:
    the next is refused at once with RESOURCE_EXHAUSTED, and the held one then goes on."""
    roomy = {"lock_timeout_ms": 60_000, "statement_timeout_ms": 60_000, "max_deadline_ms": 60_000}
    server, _ = await start_server(
        http_listen="127.0.0.1:0", max_concurrent_rpcs=1, metrics_listen="127.0.0.1:0", **roomy
    )
    seller = new_id("seller")
    port = server.http_port
    await http_call(port, "GET", f"/v1/sellers/{seller}/status")  # create the week
    check = f"/v1/sellers/{seller}:checkAndConsume"
    async with seller_week_locked(db, seller):
        held = asyncio.ensure_future(http_call(port, "POST", check, _check(seller, "c-held")))

        async def in_flight() -> bool:
            return await asyncio.to_thread(waiting_calls, server.metrics_port) >= 1

        await eventually(in_flight, within_s=60)
        refused = await http_call(port, "POST", check, _check(seller, "c-over"))
    accepted = await held
    await server.stop(grace=0)

    _is_status(refused, 8)
    assert refused.status == 429
    assert accepted.body["allowed"] is True
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_a_seller_id_with_a_colon_is_sent_percent_encoded(
    open_server: tuple[int, str],
) -> None:
    """A seller_id may hold ':', which a path segment would take for the custom verb's."""
    port, _ = open_server
    seller = f"shop:{new_id('seller')}"
    encoded = seller.replace(":", "%3A")
    granted = await http_call(
        port, "POST", f"/v1/sellers/{encoded}:checkAndConsume", _check(seller, "c-1")
    )
    status = await http_call(port, "GET", f"/v1/sellers/{encoded}/status")

    assert granted.body["status"]["sellerId"] == seller
    assert status.body["status"]["usedThisWeek"] == "1"


async def test_a_large_body_sent_after_100_continue_is_read(open_server: tuple[int, str]) -> None:
    """curl sends ``Expect: 100-continue`` before a large body and waits for the server."""
    port, _ = open_server
    rows = [{"sellerId": new_id("seller"), "day": "2026-11-20", "gmvMinor": n} for n in range(900)]
    body = json.dumps({"rows": rows}).encode()

    def send() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/gmv:batchRecord HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            interim = sock.recv(1024)  # nothing is sent until the server says continue
            sock.sendall(body)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if b'"replayed"' in answer:
                    break
            return interim, answer

    interim, answer = await asyncio.to_thread(send)

    assert interim.startswith(b"HTTP/1.1 100 ")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b'"rowsRecorded": 900' in answer


async def test_head_is_not_served_and_gets_no_body(open_server: tuple[int, str]) -> None:
    port, _ = open_server
    answer = await http_call(port, "HEAD", "/v1/sellers/s-1/status")

    assert (answer.status, answer.headers["allow"], answer.body) == (405, "GET", "")


async def test_a_stop_lets_a_call_in_flight_finish_and_health_says_not_serving(
    start_server: Any, db: Any
) -> None:
    roomy = {"lock_timeout_ms": 60_000, "statement_timeout_ms": 60_000, "max_deadline_ms": 60_000}
    server, _ = await start_server(
        http_listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", drain_delay_s=30, **roomy
    )
    seller = new_id("seller")
    port = server.http_port
    await http_call(port, "GET", f"/v1/sellers/{seller}/status")  # create the week
    async with seller_week_locked(db, seller):
        held = asyncio.ensure_future(
            http_call(port, "POST", f"/v1/sellers/{seller}:checkAndConsume", _check(seller, "c"))
        )

        async def in_flight() -> bool:
            return await asyncio.to_thread(waiting_calls, server.metrics_port) >= 1

        await eventually(in_flight, within_s=60)
        stopping = asyncio.ensure_future(server.stop(grace=30))

        async def draining() -> bool:
            return (await http_call(port, "GET", "/healthz")).status == 503

        await eventually(draining, within_s=60)
        health = await http_call(port, "GET", "/healthz")
        server.cut_drain()
    accepted = await held
    await stopping

    assert health.body == {"status": "NOT_SERVING"}
    assert accepted.status == 200
    assert accepted.body["allowed"] is True
    with pytest.raises(OSError):
        await http_call(port, "GET", "/healthz")
