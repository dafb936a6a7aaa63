"""Security: callers authenticate (bearer token, or client certificate over mutual TLS), each
RPC is opened by one role and denied by default, unauthenticated serving is for loopback
only, and a call never runs past the server's deadline cap.

The matrix test runs every role against every RPC, plus no credentials and a wrong token.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pki import Authority
from servers import server_settings
from sqlalchemy import text
from support import (
    answered,
    eventually,
    everything_of,
    invite,
    ledger_counts,
    new_id,
    seller_week_locked,
)

from quota_authority.api.callers import ROLES, Caller, load_callers
from quota_authority.errors import ConfigError
from quota_authority.server import QuotaAuthorityServer
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

TOKENS = {role: f"token-of-the-{role}-caller-0123456789" for role in ROLES}
CALLERS = tuple(
    Caller(name=f"{role}-service", roles=frozenset({role}), token=TOKENS[role]) for role in ROLES
)


def _requests(seller: str) -> dict[str, Any]:
    """A valid request for every RPC of the service, for ``seller``."""
    return {
        "CheckAndConsume": invite(seller, "creator-1", request_id=new_id("r")),
        "RecordReply": pb.RecordReplyRequest(
            seller_id=seller,
            creator_id="creator-1",
            source=pb.CONNECTION_SOURCE_REPLY,
            request_id=new_id("r"),
        ),
        "Block": pb.BlockRequest(
            seller_id=seller, creator_id="creator-1", blocked_by=pb.PARTY_SELLER
        ),
        "Unblock": pb.UnblockRequest(
            seller_id=seller, creator_id="creator-1", blocked_by=pb.PARTY_SELLER
        ),
        "GetStatus": pb.GetStatusRequest(seller_id=seller),
        "ListDecisions": pb.ListDecisionsRequest(seller_id=seller),
        "RecordGmv": pb.RecordGmvRequest(seller_id=seller, day="2026-11-20", gmv_minor=100),
        "UpsertSeller": pb.UpsertSellerRequest(seller_id=seller, time_zone="UTC"),
        "BatchCheckAndConsume": pb.BatchCheckAndConsumeRequest(
            seller_id=seller,
            items=[pb.OutreachItem(creator_id="creator-1", action=pb.ACTION_MESSAGE)],
            mode=pb.BATCH_MODE_BEST_EFFORT,
        ),
        "BatchRecordGmv": pb.BatchRecordGmvRequest(
            rows=[pb.GmvRow(seller_id=seller, day="2026-11-20", gmv_minor=100)]
        ),
        # Nothing to release: the service's own answer (NOT_FOUND) shows the call got in.
        "ReleaseOutreach": pb.ReleaseOutreachRequest(seller_id=seller, request_id="r-none"),
        # R16: nothing to confirm either (NOT_FOUND).
        "ConfirmOutreach": pb.ConfirmOutreachRequest(seller_id=seller, request_id="r-none"),
        # R17: only admin opens it.
        "AdjustQuota": pb.AdjustQuotaRequest(
            seller_id=seller, delta=5, note="incident 42", request_id=new_id("r")
        ),
    }


# The answer of an RPC its caller may call, when it is not OK.
ANSWERED = {
    "ReleaseOutreach": grpc.StatusCode.NOT_FOUND,
    "ConfirmOutreach": grpc.StatusCode.NOT_FOUND,
}


RPCS = [m.name for m in pb.DESCRIPTOR.services_by_name["QuotaAuthorityService"].methods]
OPENS = {
    "outreach": {"CheckAndConsume", "BatchCheckAndConsume", "ReleaseOutreach", "ConfirmOutreach"},
    "engagement": {"RecordReply"},
    "safety": {"Block", "Unblock"},
    "data": {"RecordGmv", "BatchRecordGmv", "UpsertSeller"},
    "reader": {"GetStatus", "ListDecisions"},
    "admin": set(RPCS),
}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
async def guarded(start_server) -> str:
    """A server that knows one caller per role, by token."""
    _, address = await start_server(callers=CALLERS)
    return address


def test_every_rpc_of_the_service_is_opened_by_some_role():
    # A new RPC without a role would be admin-only: deny by default, but say it here.
    assert set().union(*OPENS.values()) == set(RPCS)
    assert all(rpc in OPENS["admin"] for rpc in RPCS)


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("role", [*ROLES, "no credentials", "unknown token"])
async def test_security_matrix(guarded, db, rpc: str, role: str):
    seller = new_id("seller")
    if role == "no credentials":
        metadata: tuple[tuple[str, str], ...] = ()
        expected = grpc.StatusCode.UNAUTHENTICATED
    elif role == "unknown token":
        metadata = bearer("not-a-token-anyone-was-given")
        expected = grpc.StatusCode.UNAUTHENTICATED
    else:
        metadata = bearer(TOKENS[role])
        opened = ANSWERED.get(rpc, grpc.StatusCode.OK)
        expected = opened if rpc in OPENS[role] else grpc.StatusCode.PERMISSION_DENIED
    async with grpc.aio.insecure_channel(guarded) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        call = getattr(stub, rpc)(_requests(seller)[rpc], metadata=metadata, timeout=5)
        try:
            await call
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as e:
            code = e.code()

    assert code == expected
    if expected in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        assert all(rows == [] for rows in (await everything_of(db, seller)).values())


async def test_a_caller_with_several_roles_may_call_each_of_their_rpcs(start_server, seller):
    both = Caller("seller-center", frozenset({"reader", "outreach"}), token="x" * 32)
    _, address = await start_server(callers=(both,))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        granted = await stub.CheckAndConsume(
            invite(seller, "c-1"), metadata=bearer("x" * 32), timeout=5
        )
        status = await stub.GetStatus(
            pb.GetStatusRequest(seller_id=seller), metadata=bearer("x" * 32), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RecordGmv(
                pb.RecordGmvRequest(seller_id=seller, day="2026-11-20", gmv_minor=1),
                metadata=bearer("x" * 32),
                timeout=5,
            )

    assert granted.allowed and status.status.used_this_week == 1
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "lacks role 'data'" in refused.value.details()


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "token-without-scheme"])
async def test_a_malformed_authorization_header_is_unauthenticated(guarded, header: str):
    async with grpc.aio.insecure_channel(guarded) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetStatus(
                pb.GetStatusRequest(seller_id="s"), metadata=(("authorization", header),), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_checks_need_no_credentials_and_reflection_needs_a_known_caller(guarded):
    async with grpc.aio.insecure_channel(guarded) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")

        async def reflect(metadata: tuple[tuple[str, str], ...]) -> Any:
            call = reflection.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=5)
            return [response async for response in call]

        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await reflect(())
        listed = await reflect(bearer(TOKENS["reader"]))

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    services = {s.name for s in listed[0].list_services_response.service}
    assert "quota_authority.v1.QuotaAuthorityService" in services


# --- TLS and mutual TLS -------------------------------------------------------------------


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


def tls_channel(
    address: str, authority: Authority, client: tuple[bytes, bytes] | None = None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=authority.cert,
        private_key=None if client is None else client[1],
        certificate_chain=None if client is None else client[0],
    )
    return grpc.aio.secure_channel(address, credentials)


async def test_tls_serves_token_callers_and_refuses_plaintext(start_server, authority, db, seller):
    server_cert = authority.issue("quota-authority.test", server=True)
    _, address = await start_server(
        callers=CALLERS, tls_cert_file=server_cert.cert_file, tls_key_file=server_cert.key_file
    )
    async with tls_channel(address, authority) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        granted = await stub.CheckAndConsume(
            invite(seller, "c-1"), metadata=bearer(TOKENS["outreach"]), timeout=5
        )
    async with grpc.aio.insecure_channel(address) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.QuotaAuthorityServiceStub(plaintext).CheckAndConsume(
                invite(seller, "c-2"), metadata=bearer(TOKENS["outreach"]), timeout=2
            )

    assert granted.allowed
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (await ledger_counts(db, seller))["used"] == 1


@pytest.fixture(scope="module")
async def mutual_tls(start_server, authority) -> str:
    """A server that requires client certificates signed by ``authority``, and knows the
    caller whose certificate names ``invites.internal`` as an outreach caller."""
    server_cert = authority.issue("quota-authority.test", server=True)
    _, address = await start_server(
        callers=(
            Caller("invites", frozenset({"outreach"}), certificate_identity="invites.internal"),
            Caller("reader", frozenset({"reader"}), token="r" * 32),
        ),
        tls_cert_file=server_cert.cert_file,
        tls_key_file=server_cert.key_file,
        tls_client_ca_file=authority.cert_file,
    )
    return address


async def test_mutual_tls_identifies_the_caller_by_its_certificate(mutual_tls, authority, seller):
    client = authority.issue("invites.internal")
    async with tls_channel(mutual_tls, authority, (client.cert, client.key)) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        granted = await stub.CheckAndConsume(invite(seller, "c-1"), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetStatus(pb.GetStatusRequest(seller_id=seller), timeout=5)
        # A token, when sent, decides who the caller is.
        status = await stub.GetStatus(
            pb.GetStatusRequest(seller_id=seller), metadata=bearer("r" * 32), timeout=5
        )

    assert granted.allowed
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert status.status.used_this_week == 1


async def test_mutual_tls_refuses_a_certificate_of_no_known_caller(mutual_tls, authority, db):
    seller = new_id("seller")
    stranger = authority.issue("stranger.internal")
    async with tls_channel(mutual_tls, authority, (stranger.cert, stranger.key)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.QuotaAuthorityServiceStub(channel).CheckAndConsume(
                invite(seller, "c-1"), timeout=5
            )

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert all(rows == [] for rows in (await everything_of(db, seller)).values())


@pytest.mark.parametrize("client", ["no certificate", "another authority's certificate"])
async def test_mutual_tls_refuses_a_connection_without_a_trusted_certificate(
    mutual_tls, authority, tmp_path, client: str
):
    pair = None
    if client != "no certificate":
        other = Authority(tmp_path, "other-ca").issue("invites.internal")
        pair = (other.cert, other.key)
    async with tls_channel(mutual_tls, authority, pair) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.QuotaAuthorityServiceStub(channel).CheckAndConsume(
                invite(new_id("seller"), "c-1"), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails


# --- who may serve unauthenticated ---------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "quota.example.internal:0"])
async def test_serving_beyond_loopback_without_authentication_is_refused_at_start(
    database_url, clock, listen: str
):
    server = QuotaAuthorityServer(server_settings(listen=listen), database_url, clock)
    with pytest.raises(ConfigError, match="QUOTA_AUTHORITY_CALLERS_FILE"):
        await server.start()


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "quota.example.internal:0"])
async def test_bearer_tokens_without_tls_beyond_loopback_are_refused_at_start(
    database_url, clock, listen: str
):
    """Anyone on the network path could read a token sent in plaintext."""
    server = QuotaAuthorityServer(
        server_settings(listen=listen, callers=CALLERS), database_url, clock
    )
    with pytest.raises(ConfigError, match="QUOTA_AUTHORITY_ALLOW_PLAINTEXT_TOKENS"):
        await server.start()


@pytest.mark.parametrize(
    "overrides",
    [
        {"allow_unauthenticated_remote": True},
        {"callers": CALLERS, "allow_plaintext_tokens": True},
        {"callers": (Caller("pipeline", frozenset({"data"}), certificate_identity="p.internal"),)},
    ],
    ids=["explicitly allowed", "tokens explicitly allowed in plaintext", "no tokens"],
)
async def test_serving_beyond_loopback_starts_when_allowed_or_authenticated(
    start_server, overrides: dict[str, Any]
):
    server, _ = await start_server(listen="0.0.0.0:0", **overrides)
    await server.stop(grace=0)


# --- the callers file ------------------------------------------------------------------------


def test_the_callers_file_is_read_with_tokens_and_certificate_identities(tmp_path: Path):
    path = tmp_path / "callers.toml"
    path.write_text(
        """
        [[callers]]
        name = "invites"
        roles = ["outreach"]
        token = "0123456789abcdef0123"

        [[callers]]
        name = "pipeline"
        roles = ["data", "reader"]
        certificate_identity = "pipeline.internal"
        """
    )
    invites, pipeline = load_callers(path)

    assert (invites.name, invites.roles, invites.token) == (
        "invites",
        frozenset({"outreach"}),
        "0123456789abcdef0123",
    )
    assert pipeline.certificate_identity == "pipeline.internal"
    assert "0123456789abcdef0123" not in repr(invites)  # secrets stay out of logs


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[callers]]\nroles = ["reader"]\ntoken = "0123456789abcdef"', r"callers\[0\]\.name"),
        ('[[callers]]\nname = "a"\nroles = ["root"]\ntoken = "0123456789abcdef"', "unknown role"),
        ('[[callers]]\nname = "a"\nroles = []\ntoken = "0123456789abcdef"', r"\.roles"),
        ('[[callers]]\nname = "a"\nroles = ["reader"]\ntoken = "short"', r"\.token"),
        ('[[callers]]\nname = "a"\nroles = ["reader"]', "token or a certificate_identity"),
        ('[[callers]]\nname = "a"\nroles = ["reader"]\npassword = "x"', "unknown key"),
        (
            '[[callers]]\nname = "a"\nroles = ["reader"]\ntoken = "0123456789abcdef"\n'
            '[[callers]]\nname = "b"\nroles = ["data"]\ntoken = "0123456789abcdef"',
            r"callers\[1\]\.token: the same token",
        ),
        ("callers = 3", "array of tables"),
        ("[[callers]\n", "not valid TOML"),
    ],
)
def test_a_bad_callers_file_is_refused_naming_the_key(tmp_path: Path, body: str, message: str):
    path = tmp_path / "callers.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_callers(path)


# --- the deadline cap -------------------------------------------------------------------------


async def test_a_call_without_a_deadline_ends_at_the_servers_cap_and_a_retry_charges_once(
    start_server, db, seller
):
    """The cap ends the call, not the (much longer) lock timeout. Like the caller's own
    deadline, it leaves the outcome unknown: the transaction may still take the lock and
    commit once the lock is free. So the promise is not "nothing was charged" but "a retry
    with the same request_id never charges twice"."""
    _, address = await start_server(max_deadline_ms=300, lock_timeout_ms=60_000)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        # The cap (300 ms) can end a call on a loaded machine with no lock held: set-up and
        # retries are sent again until answered, as callers do.
        capped_out = grpc.StatusCode.DEADLINE_EXCEEDED
        await answered(stub.GetStatus, pb.GetStatusRequest(seller_id=seller), capped_out)
        async with seller_week_locked(db, seller):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as capped:
                await stub.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))
            elapsed = time.monotonic() - started
        retry = invite(seller, "c-1", request_id="r-1")
        retried = await answered(stub.CheckAndConsume, retry, capped_out)
        again = await answered(stub.CheckAndConsume, retry, capped_out)

    # The lock wait, shortened to the cap, and the cap itself end together: either way the
    # outcome is unknown and the caller retries with its request_id.
    assert capped.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert "retry with the same request_id" in capped.value.details()
    assert 0.25 < elapsed < 30, "ended at the 300 ms cap, not at the 60 s lock timeout"
    # The retry is the original answer (replayed) if the capped call committed after all,
    # or one fresh decision if it did not; the next retry replays whichever it was.
    assert retried.allowed
    assert again.allowed and again.replayed
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_a_lock_wait_ends_with_the_callers_deadline(start_server, db, seller):
    """The transaction's lock_timeout comes from the caller's remaining deadline, so a
    caller that gave up leaves no lock wait behind in the database."""
    _, address = await start_server(lock_timeout_ms=10_000, statement_timeout_ms=20_000)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))
        async with seller_week_locked(db, seller):
            with pytest.raises(grpc.aio.AioRpcError) as expired:
                await stub.CheckAndConsume(invite(seller, "c-1"), timeout=0.3)

            # Gone well before the 10 s lock timeout would have ended it (eventually raises).
            async def no_lock_wait_left() -> bool:
                async with db.connect() as conn:
                    waiting = await conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name = 'quota-authority' "
                            "AND wait_event_type = 'Lock'"
                        )
                    )
                return waiting == 0

            await eventually(no_lock_wait_left, within_s=8)

    # The database gives up the wait at the deadline, so the answer may beat the deadline.
    assert expired.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
