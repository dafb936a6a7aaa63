"""The error hierarchy, drawn once; ``api.error_mapping`` maps it to gRPC codes in one place.

::

    QuotaAuthorityError
    ├── InvalidArgument        bad input; names every bad field      -> INVALID_ARGUMENT
    ├── RequestIdReused        same request_id, other parameters     -> FAILED_PRECONDITION
    ├── NotReleasable          a ReleaseOutreach (R14) or ConfirmOutreach (R16) that cannot
    │   │                      act on the outreach it names
    │   ├── OutreachNotFound   no CheckAndConsume answered the request_id  -> NOT_FOUND
    │   ├── NothingCharged     the call named charged nothing        -> FAILED_PRECONDITION
    │   ├── WeekEnded          its charge was in an earlier week     -> FAILED_PRECONDITION
    │   ├── NotAllowed         ConfirmOutreach of a denied call      -> FAILED_PRECONDITION
    │   ├── HoldExpired        the hold expired: its unit went back  -> FAILED_PRECONDITION
    │   └── HoldVoided         ConfirmOutreach of a released hold    -> FAILED_PRECONDITION
    ├── NotAdjustable          an AdjustQuota the week forbids (R17) -> FAILED_PRECONDITION
    ├── Unavailable            the outcome is unknown; retry it      -> UNAVAILABLE
    │   └── StoreUnavailable   the database failed or timed out
    │       ├── LockTimeout    a row lock was not granted in time
    │       └── CommitOutcomeUnknown   it failed while committing: changes may have landed
    ├── DeadlineExceeded       the server's deadline cap passed      -> DEADLINE_EXCEEDED
    ├── Unauthenticated        no credentials, or unknown ones       -> UNAUTHENTICATED
    ├── PermissionDenied       a known caller without the role       -> PERMISSION_DENIED
    └── StartupError           the process cannot start; one line, an exit status (never
        │                      reaches a caller; ``cli`` prints it and exits with it)
        ├── ConfigError        bad settings; names the key                   -> exit 2
        ├── DatabaseUnreachable  QUOTA_AUTHORITY_DATABASE_URL fails to connect -> exit 3
        ├── CannotListen       a listen address cannot be bound              -> exit 4
        └── CannotDistribute   QUOTA_AUTHORITY_DISTRIBUTE: Citus refused     -> exit 5

A denial (quota exhausted, blocked, ...) is an answer, not an error, and has no class here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CannotDistribute",
    "CannotListen",
    "CommitOutcomeUnknown",
    "ConfigError",
    "DatabaseUnreachable",
    "DeadlineExceeded",
    "FieldViolation",
    "HoldExpired",
    "HoldVoided",
    "InvalidArgument",
    "LockTimeout",
    "NotAdjustable",
    "NotAllowed",
    "NotReleasable",
    "NothingCharged",
    "OutreachNotFound",
    "PermissionDenied",
    "QuotaAuthorityError",
    "RequestIdReused",
    "StartupError",
    "StoreUnavailable",
    "Unauthenticated",
    "Unavailable",
    "WeekEnded",
]


class QuotaAuthorityError(Exception):
    """Base of every error the service raises on purpose."""


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its name as the caller spelled it, and why it is bad."""

    field: str
    description: str


class InvalidArgument(QuotaAuthorityError):
    """The request is malformed; nothing was read or changed."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class RequestIdReused(QuotaAuthorityError):
    """The request_id was used before by this seller for a call with other parameters (R11).
    ``seller_id`` is empty for a BatchRecordGmv, whose keys belong to no seller."""

    def __init__(self, seller_id: str, request_id: str) -> None:
        self.seller_id = seller_id
        self.request_id = request_id
        by = f"by seller {seller_id!r} for a call" if seller_id else "for a BatchRecordGmv"
        super().__init__(
            f"request_id {request_id!r} was already used {by} with different parameters"
        )


class NotReleasable(QuotaAuthorityError):
    """R14: the outreach a ReleaseOutreach names has no charge to give back, or (R16) the
    one a ConfirmOutreach names cannot be confirmed; nothing was changed by the call (but
    see ``HoldExpired``). ``reason`` is the ErrorInfo reason callers match on."""

    reason = ""

    def __init__(self, seller_id: str, request_id: str, message: str) -> None:
        self.seller_id = seller_id
        self.request_id = request_id
        super().__init__(message)


class OutreachNotFound(NotReleasable):
    """No CheckAndConsume or BatchCheckAndConsume of the seller answered the request_id (or
    its answer is no longer kept, R11), so there is no outreach to release."""

    reason = "OUTREACH_NOT_FOUND"

    def __init__(self, seller_id: str, request_id: str) -> None:
        super().__init__(
            seller_id,
            request_id,
            f"no CheckAndConsume or BatchCheckAndConsume of seller {seller_id!r} "
            f"was answered for request_id {request_id!r}",
        )


class NothingCharged(NotReleasable):
    """The outreach named was denied, free (connected, already counted), a dry run, or in
    an all-or-nothing batch that applied nothing: it charged no unit to give back."""

    reason = "NOTHING_CHARGED"

    def __init__(self, seller_id: str, request_id: str, item_index: int | None) -> None:
        item = "" if item_index is None else f" item {item_index}"
        super().__init__(
            seller_id, request_id, f"request_id {request_id!r}{item} charged nothing to release"
        )


class WeekEnded(NotReleasable):
    """The outreach named was charged in an earlier week of the seller: its unit expired
    with that week (R2: unused quota never carries over), and releasing it would give the
    current week a unit it never had."""

    reason = "WEEK_ENDED"

    def __init__(self, seller_id: str, request_id: str) -> None:
        super().__init__(
            seller_id,
            request_id,
            f"request_id {request_id!r} charged an earlier week; only the current week's "
            "charges can be released",
        )


def _named(request_id: str, item_index: int | None) -> str:
    item = "" if item_index is None else f" item {item_index}"
    return f"request_id {request_id!r}{item}"


class NotAllowed(NotReleasable):
    """R16: ConfirmOutreach named a call (or batch item) that was denied: nothing was
    granted, so there is nothing to confirm."""

    reason = "NOT_ALLOWED"

    def __init__(self, seller_id: str, request_id: str, item_index: int | None) -> None:
        super().__init__(
            seller_id,
            request_id,
            f"{_named(request_id, item_index)} was not allowed: there is nothing to confirm",
        )


class HoldExpired(NotReleasable):
    """R16: the hold named expired unconfirmed, and its unit went back then (by the sweep,
    or by this very call when the sweep had not come to it yet: the expiry is recorded
    even though the call is refused)."""

    reason = "HOLD_EXPIRED"

    def __init__(self, seller_id: str, request_id: str, item_index: int | None) -> None:
        super().__init__(
            seller_id,
            request_id,
            f"the hold of {_named(request_id, item_index)} expired unconfirmed; its unit "
            "went back then",
        )


class HoldVoided(NotReleasable):
    """R16: ConfirmOutreach named a hold that ReleaseOutreach voided."""

    reason = "HOLD_VOIDED"

    def __init__(self, seller_id: str, request_id: str, item_index: int | None) -> None:
        super().__init__(
            seller_id,
            request_id,
            f"the hold of {_named(request_id, item_index)} was released (voided); there is "
            "nothing to confirm",
        )


class NotAdjustable(QuotaAuthorityError):
    """R17: an AdjustQuota the seller's current week does not allow; nothing was changed.
    ``reason`` is the ErrorInfo reason callers match on: ``ADJUSTMENT_BELOW_USED`` (the
    limit would fall below the units already charged to the weekly quota) or
    ``UNLIMITED_TIER`` (the week's tier has no limit to adjust)."""

    def __init__(self, seller_id: str, reason: str, message: str) -> None:
        self.seller_id = seller_id
        self.reason = reason
        super().__init__(message)


class Unavailable(QuotaAuthorityError):
    """No answer: nothing was granted (but see ``CommitOutcomeUnknown``); retry with the
    same request_id."""


class StoreUnavailable(Unavailable):
    """The database failed, timed out or could not take a lock in time."""


class LockTimeout(StoreUnavailable):
    """A row lock was not granted within the lock timeout: another transaction holds it.
    Every call that needs the same lock would wait again, so none is retried on the
    caller's behalf."""


class CommitOutcomeUnknown(StoreUnavailable):
    """The database failed while committing: the changes may or may not have landed, so the
    work must not be redone on the caller's behalf; the caller retries with its request_id."""


class DeadlineExceeded(QuotaAuthorityError):
    """The call ran past the server's deadline cap (``max_deadline_ms``). Like the caller's
    own deadline, its outcome is unknown; the caller retries with its request_id."""


class Unauthenticated(QuotaAuthorityError):
    """The call carries no credentials the server knows; nothing was read or changed."""


class PermissionDenied(QuotaAuthorityError):
    """The caller is known but has no role that opens this RPC; nothing was read or changed."""


class StartupError(QuotaAuthorityError):
    """The process cannot start as configured. The message is one line that names the
    setting at fault (and never a password); ``exit_status`` is the process's documented
    exit status (docs/operations.md, "Command line")."""

    exit_status = 1
    # How the one line printed on stderr begins.
    label = "error"


class ConfigError(StartupError):
    """The settings are invalid; the message names the offending key."""

    exit_status = 2
    label = "configuration error"


class DatabaseUnreachable(StartupError):
    """The database at start could not be connected to or refused us; the message names
    ``QUOTA_AUTHORITY_DATABASE_URL`` (its password hidden) and what failed."""

    exit_status = 3


class CannotListen(StartupError):
    """A listen address cannot be bound (in use, not this machine's, not permitted); the
    message names its setting, ``QUOTA_AUTHORITY_LISTEN``, ``QUOTA_AUTHORITY_HTTP_LISTEN`` or
    ``QUOTA_AUTHORITY_METRICS_LISTEN``."""

    exit_status = 4


class CannotDistribute(StartupError):
    """``QUOTA_AUTHORITY_DISTRIBUTE`` is true and Citus refused to distribute the schema (no
    worker nodes, a table it cannot distribute); the message says what Citus said."""

    exit_status = 5
