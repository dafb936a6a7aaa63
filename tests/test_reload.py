"""Reloading without a restart (SIGHUP, or ``QuotaAuthorityServer.reload``): the policy file,
the callers file and the TLS files are read again; each that loads replaces the one in use,
each that does not is refused and the one in use kept. A new policy makes the weeks
snapshotted after the reload; weeks snapshotted before keep theirs (R2), and GetStatus
shows which policy a week was made under."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from pathlib import Path

import grpc
import pytest
from http_json import http_call
from pki import Authority
from support import command_environment, eventually, free_port

from quota_authority.api.callers import load_callers
from quota_authority.policy import Policy, load_policy
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc


def policy_with_t0_limit(limit: int) -> str:
    return f"""
[[tiers]]
name = "T0"
min_gmv_30d_minor = 0
weekly_limit = {limit}
max_creator_followers = 20000
"""


async def status(stub: pb_grpc.QuotaAuthorityServiceStub, seller: str) -> pb.QuotaStatus:
    reply = await stub.GetStatus(pb.GetStatusRequest(seller_id=seller), timeout=30)
    return reply.status


# --- the policy ------------------------------------------------------------------------


async def test_a_reloaded_policy_makes_the_weeks_snapshotted_after_it(
    start_server, tmp_path, seller
):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy_with_t0_limit(50))
    first = load_policy(policy_file)
    server, address = await start_server(policy=first, config_path=policy_file)
    later_seller = seller + "-later"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        before = await status(stub, seller)

        policy_file.write_text(policy_with_t0_limit(7))
        assert server.reload() == []
        kept = await status(stub, seller)
        after = await status(stub, later_seller)

    assert (before.weekly_limit, before.policy_digest) == (50, first.digest)
    assert (kept.weekly_limit, kept.policy_digest) == (50, first.digest)  # snapshotted (R2)
    assert (after.weekly_limit, after.policy_digest) == (7, load_policy(policy_file).digest)
    assert first.digest != after.policy_digest


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("[[tiers]]\nname = 'T0'\nmin_gmv_30d_minor = 0\nweekly_limit = -1\n", "weekly_limit"),
        ("this is not TOML", "QUOTA_AUTHORITY_CONFIG"),
        ("[week]\nrefresh_weekday = 'funday'\n", "week.refresh_weekday"),
    ],
)
async def test_a_bad_new_policy_file_is_refused_and_the_one_in_use_kept(
    start_server, tmp_path, seller, bad, named
):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy_with_t0_limit(9))
    server, address = await start_server(policy=load_policy(policy_file), config_path=policy_file)

    policy_file.write_text(bad)
    problems = server.reload()

    assert len(problems) == 1 and named in problems[0]
    async with grpc.aio.insecure_channel(address) as channel:
        assert (await status(pb_grpc.QuotaAuthorityServiceStub(channel), seller)).weekly_limit == 9


def test_equal_policies_have_equal_digests_and_any_change_changes_it():
    assert Policy().digest == Policy().digest
    assert Policy(starter_pack_size=999).digest != Policy().digest
    assert Policy().digest.startswith("sha256:") and len(Policy().digest) == 7 + 16


# --- the callers -----------------------------------------------------------------------

OLD_TOKEN = "the-old-admin-token-0123456789"
NEW_TOKEN = "the-new-admin-token-9876543210"


def callers_file_with(path: Path, token: str) -> Path:
    path.write_text(f'[[callers]]\nname = "ops"\nroles = ["admin"]\ntoken = "{token}"\n')
    return path


async def answer(address: str, token: str, seller: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        try:
            await stub.GetStatus(
                pb.GetStatusRequest(seller_id=seller),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=30,
            )
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_a_reloaded_callers_file_authenticates_the_calls_after_it(
    start_server, tmp_path, seller
):
    callers_file = callers_file_with(tmp_path / "callers.toml", OLD_TOKEN)
    server, address = await start_server(
        callers=load_callers(callers_file), callers_file=callers_file
    )
    assert await answer(address, OLD_TOKEN, seller) == grpc.StatusCode.OK

    callers_file_with(callers_file, NEW_TOKEN)
    assert server.reload() == []
    assert await answer(address, OLD_TOKEN, seller) == grpc.StatusCode.UNAUTHENTICATED
    assert await answer(address, NEW_TOKEN, seller) == grpc.StatusCode.OK

    callers_file.write_text('[[callers]]\nname = "ops"\nroles = ["no-such-role"]\n')
    (problem,) = server.reload()
    assert "callers[0].roles" in problem
    assert await answer(address, NEW_TOKEN, seller) == grpc.StatusCode.OK


# --- the certificates ------------------------------------------------------------------


async def handshake(address: str, authority: Authority) -> grpc.StatusCode:
    """How a call over a new connection that trusts only ``authority`` ends."""
    credentials = grpc.ssl_channel_credentials(authority.cert)
    async with grpc.aio.secure_channel(address, credentials) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        try:
            await stub.GetStatus(pb.GetStatusRequest(seller_id="s-tls"), timeout=30)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_reloaded_certificates_serve_the_connections_made_after_it(start_server, tmp_path):
    old_ca = Authority(tmp_path, "old-ca")
    new_ca = Authority(tmp_path, "new-ca")
    served = old_ca.issue("server", server=True)
    server, address = await start_server(
        tls_cert_file=served.cert_file, tls_key_file=served.key_file
    )
    address = address.replace("127.0.0.1", "localhost")
    assert await handshake(address, old_ca) == grpc.StatusCode.OK

    renewed = new_ca.issue("renewed", server=True)
    served.cert_file.write_bytes(renewed.cert)
    served.key_file.write_bytes(renewed.key)
    assert server.reload() == []
    assert await handshake(address, new_ca) == grpc.StatusCode.OK
    assert await handshake(address, old_ca) == grpc.StatusCode.UNAVAILABLE

    served.key_file.write_bytes(b"not a key")
    (problem,) = server.reload()
    assert "QUOTA_AUTHORITY_TLS_KEY_FILE" in problem
    assert await handshake(address, new_ca) == grpc.StatusCode.OK


# --- SIGHUP ----------------------------------------------------------------------------


async def test_sighup_reloads_a_running_serve(database_url, tmp_path, seller):
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy_with_t0_limit(11))
    address = f"127.0.0.1:{free_port()}"
    env = command_environment(
        QUOTA_AUTHORITY_DATABASE_URL=database_url,
        QUOTA_AUTHORITY_LISTEN=address,
        QUOTA_AUTHORITY_CONFIG=str(policy_file),
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quota_authority.cli", "serve", env=env, stderr=stderr
        )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)

            async def limit_of(seller_id: str) -> int:
                try:
                    return (await status(stub, seller_id)).weekly_limit
                except grpc.aio.AioRpcError:
                    return -1  # not serving yet

            async def serving_the_first_policy() -> bool:
                return await limit_of(seller) == 11

            await eventually(serving_the_first_policy, within_s=120)
            policy_file.write_text(policy_with_t0_limit(12))
            serve.send_signal(signal.SIGHUP)
            await eventually(lambda: log_says(log, "reloaded the policy file"), within_s=120)
            assert await limit_of(seller + "-after") == 12
            assert await limit_of(seller) == 11
    finally:
        serve.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(serve.wait(), 120) == 0


async def log_says(log: Path, message: str) -> bool:
    return message in await asyncio.to_thread(log.read_text)


async def test_reloaded_certificates_serve_the_http_ports_new_connections(start_server, tmp_path):
    old_ca = Authority(tmp_path, "old-ca")
    new_ca = Authority(tmp_path, "new-ca")
    served = old_ca.issue("server", server=True)
    server, _ = await start_server(
        http_listen="127.0.0.1:0", tls_cert_file=served.cert_file, tls_key_file=served.key_file
    )

    async def health(ca: Authority) -> int | str:
        trust = ssl.create_default_context(cafile=ca.cert_file)
        try:
            return (await http_call(server.http_port, "GET", "/healthz", tls=trust)).status
        except ssl.SSLError as e:
            return e.reason or "refused"

    before = await health(old_ca)
    renewed = new_ca.issue("renewed", server=True)
    served.cert_file.write_bytes(renewed.cert)
    served.key_file.write_bytes(renewed.key)
    assert server.reload() == []

    assert before == 200
    assert await health(new_ca) == 200
    assert await health(old_ca) == "CERTIFICATE_VERIFY_FAILED"
