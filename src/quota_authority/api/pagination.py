"""AIP-158 page tokens for ListDecisions.

A token is opaque to callers: URL-safe base64 of the position of the last decision of the
page it follows, with a digest of the query that issued it. A token is refused, with
INVALID_ARGUMENT naming ``page_token``, when it does not decode or when the query it comes
with differs from the one that issued it (AIP-158: only page_size may change between pages).
Tokens carry no secret and grant nothing: whoever may list the seller's decisions may read
the position a token holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime

from ..domain import DecisionQuery
from ..errors import FieldViolation, InvalidArgument

__all__ = ["decode_page_token", "encode_page_token"]

_FIELD = "page_token"


def _query_digest(query: DecisionQuery) -> str:
    bounds = (query.week_time, query.start_time, query.end_time)
    key = [query.seller_id, *(None if t is None else t.isoformat() for t in bounds)]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def encode_page_token(query: DecisionQuery, after: tuple[datetime, int]) -> str:
    """The token of the page that follows the decision at ``after`` in ``query``'s listing."""
    decided_at, audit_id = after
    body = {"q": _query_digest(query), "t": decided_at.isoformat(), "i": audit_id}
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()


def decode_page_token(query: DecisionQuery, token: str) -> tuple[datetime, int] | None:
    """The position ``token`` resumes ``query``'s listing after; None for an empty token."""
    if token == "":
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        digest, decided_at, audit_id = body["q"], datetime.fromisoformat(body["t"]), body["i"]
        if not isinstance(audit_id, int) or decided_at.tzinfo is None:
            raise ValueError("malformed position")
    except (ValueError, TypeError, KeyError, UnicodeError, binascii.Error):
        raise InvalidArgument(
            [FieldViolation(_FIELD, "is not a next_page_token of ListDecisions")]
        ) from None
    if digest != _query_digest(query):
        raise InvalidArgument(
            [
                FieldViolation(
                    _FIELD,
                    "belongs to another query: seller_id, week_time, start_time and end_time"
                    " must be those of the call that returned it",
                )
            ]
        )
    return decided_at, audit_id
