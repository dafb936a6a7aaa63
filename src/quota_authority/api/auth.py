"""Who is calling, and may they: authentication and per-RPC authorization by role.

A caller proves who it is with a bearer token (``authorization: Bearer <token>``, compared in
constant time against every known token) or, over mutual TLS, with its client certificate,
whose DNS subject-alternative name or common name is its identity. A token, when sent,
decides: a wrong one is refused even over a good certificate.

Each RPC is opened by one role (``METHOD_ROLES``); ``admin`` opens every RPC. Anything not
listed — an RPC added later, say — is denied to all but ``admin``: denied by default. Health
checks are open to everyone (load balancers and orchestrators probe without credentials);
server reflection is open to every known caller.

==========================  ==================
the call carries            answer
==========================  ==================
no credentials              UNAUTHENTICATED
an unknown token            UNAUTHENTICATED
a certificate of no caller  PERMISSION_DENIED (it is someone, but no one we gave a role)
a caller without the role   PERMISSION_DENIED
a caller with the role      the RPC runs
==========================  ==================
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from ..errors import PermissionDenied, Unauthenticated
from .callers import Caller
from .error_mapping import abort

__all__ = ["ANONYMOUS", "METHOD_ROLES", "Authorizer", "caller_name"]

_SERVICE = "/quota_authority.v1.QuotaAuthorityService/"

# The one role that opens each RPC; admin opens all.
METHOD_ROLES: dict[str, str] = {
    _SERVICE + "CheckAndConsume": "outreach",
    _SERVICE + "BatchCheckAndConsume": "outreach",
    _SERVICE + "ReleaseOutreach": "outreach",
    _SERVICE + "ConfirmOutreach": "outreach",
    _SERVICE + "RecordReply": "engagement",
    _SERVICE + "Block": "safety",
    _SERVICE + "Unblock": "safety",
    _SERVICE + "RecordGmv": "data",
    _SERVICE + "BatchRecordGmv": "data",
    _SERVICE + "UpsertSeller": "data",
    _SERVICE + "GetStatus": "reader",
    _SERVICE + "ListDecisions": "reader",
    # R17: only operators change a seller's limit.
    _SERVICE + "AdjustQuota": "admin",
}
# Who a call's handler serves: set by ``Authorizer.authorize`` in the call's context (the
# gRPC interceptor and the HTTP port run the handler in it), read by ``caller_name``.
_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)
# The name an audit records for a call on a server without a callers file (no one is
# authenticated there: it listens on loopback only, or the operator chose so).
ANONYMOUS = "anonymous"


def caller_name() -> str:
    """The name of the caller the current call was authorized for, ``ANONYMOUS`` on a
    server without callers (R17 audits it)."""
    caller = _CALLER.get()
    return ANONYMOUS if caller is None else caller.name


_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)
_ANY_CALLER_PREFIXES = ("/grpc.reflection.",)


def _digest(token: str | bytes) -> bytes:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).digest()


class Authorizer(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates every call but health checks and authorizes it by role, before the
    handler runs; a refused call reads and changes nothing."""

    def __init__(self, callers: Sequence[Caller]) -> None:
        self.replace(callers)

    def replace(self, callers: Sequence[Caller]) -> None:
        """Authenticate calls that start from now on against ``callers`` (a reloaded
        callers file); calls already authorized go on."""
        by_token = [(_digest(c.token), c) for c in callers if c.token is not None]
        by_identity = {
            c.certificate_identity: c for c in callers if c.certificate_identity is not None
        }
        self._known = (by_token, by_identity)  # one assignment: never half old, half new

    def authenticate(
        self, metadata: Sequence[tuple[str, str | bytes]], auth_context: dict[str, list[bytes]]
    ) -> Caller | None:
        """The caller the credentials name: None when they name none we gave a role but do
        identify someone (a verified certificate); raises ``Unauthenticated`` otherwise."""
        by_token, by_identity = self._known
        authorization = [v for k, v in metadata if k == "authorization"]
        if authorization:
            value = authorization[-1]
            value = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = value.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization: expected 'Bearer <token>'")
            presented = _digest(token.strip())
            found = None
            for digest, known in by_token:  # no early exit: constant time
                if hmac.compare_digest(digest, presented):
                    found = known
            if found is None:
                raise Unauthenticated("unknown bearer token")
            return found
        names = auth_context.get("x509_subject_alternative_name", []) + auth_context.get(
            "x509_common_name", []
        )
        if not names:
            raise Unauthenticated("no credentials: send a bearer token or a client certificate")
        for name in names:
            caller = by_identity.get(name.decode(errors="replace"))
            if caller is not None:
                return caller
        return None

    def authorize(self, method: str, caller: Caller | None) -> None:
        """Raises ``PermissionDenied`` unless ``caller`` has a role that opens ``method``."""
        if caller is None:
            raise PermissionDenied(f"no caller has this client certificate; {method} refused")
        if not ("admin" in caller.roles or method.startswith(_ANY_CALLER_PREFIXES)):
            role = METHOD_ROLES.get(method)
            if role is None or role not in caller.roles:
                needed = f"role {role!r}" if role else "role 'admin'"
                raise PermissionDenied(f"caller {caller.name!r} lacks {needed} for {method}")
        _CALLER.set(caller)

    async def _check(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            self.authorize(
                method, self.authenticate(context.invocation_metadata(), context.auth_context())
            )
        except (Unauthenticated, PermissionDenied) as e:
            await abort(context, method, e)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def guarded_unary(request: Any, context: Any) -> Any:
                await self._check(method, context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                guarded_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            stream = handler.stream_stream

            async def guarded_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
                await self._check(method, context)
                async for response in stream(requests, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                guarded_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        # No RPC of ours has another shape; refuse rather than serve it unchecked.
        async def refused(request: Any, context: Any) -> Any:
            await abort(context, method, PermissionDenied(f"{method} is not served"))

        return grpc.unary_unary_rpc_method_handler(refused)
