"""``QuotaClient``: a small typed async client for Python services that call quota-authority.

It speaks the generated protobuf messages (``quota_authority.v1``, shipped beside it), adds
the caller's credentials (a bearer token, TLS, a client certificate) and a deadline to every
call, and retries a call that answered ``UNAVAILABLE`` with the same request_id, as the API
asks: a retry is answered from the stored response or decided once, never charged twice. A
mutating call made without a request_id gets one generated here, so that its retries are
safe too. ``field_violations`` and ``error_reason`` read what an error carries.

It is the ``quota-authority-client`` distribution (clients/python/README.md), which needs
grpcio, protobuf and grpcio-status only; nothing here imports the server.

::

    async with QuotaClient("quota.internal:50051", token=token, root_certificates=ca) as quota:
        reply = await quota.check_and_consume("seller-1", "creator-9", "invite",
                                              creator_follower_count=1200)
        if reply.allowed:
            ...
"""

from ._client import OutreachItem, QuotaClient
from ._errors import error_reason, field_violations

__all__ = ["OutreachItem", "QuotaClient", "error_reason", "field_violations"]
