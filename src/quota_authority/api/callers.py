"""The callers file (``QUOTA_AUTHORITY_CALLERS_FILE``): who may call, how each proves it, and
the roles that open RPCs to it (``auth`` enforces them). Validated at start; every error is
a ``ConfigError`` naming the key at fault."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .._toml import array_of_tables, only, read_toml, required_name
from ..errors import ConfigError

__all__ = ["ROLES", "Caller", "load_callers"]

# What a caller may be allowed to do; each role opens some RPCs (``api.auth``).
ROLES = ("outreach", "engagement", "safety", "data", "reader", "admin")


@dataclass(frozen=True)
class Caller:
    """One known caller (from the callers file): who it is, how it proves it, what it may do."""

    # Name, for logs.
    name: str
    # Roles granted, from ROLES.
    roles: frozenset[str]
    # Bearer token it sends as "authorization: Bearer <token>"; None if it uses mTLS only.
    token: str | None = field(default=None, repr=False)
    # DNS subject-alternative name or common name of its client certificate (mTLS), if any.
    certificate_identity: str | None = None


def load_callers(path: Path) -> tuple[Caller, ...]:
    """The callers in the TOML file at ``path``: ``[[callers]]`` tables with ``name``,
    ``roles`` and a ``token`` (at least 16 characters) or a ``certificate_identity``."""
    where = "QUOTA_AUTHORITY_CALLERS_FILE"
    data = read_toml(path, where)
    only(data, where, {"callers"})
    callers: list[Caller] = []
    for at, entry in array_of_tables(data.get("callers", []), "callers", non_empty=False):
        only(entry, at, {"name", "roles", "token", "certificate_identity"})
        name = required_name(entry, at)
        roles = entry.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise ConfigError(f"{at}.roles: expected a non-empty array of role names")
        for role in roles:
            if role not in ROLES:
                raise ConfigError(f"{at}.roles: unknown role {role!r} (expected one of {ROLES})")
        token = entry.get("token")
        if token is not None and (not isinstance(token, str) or len(token.strip()) < 16):
            raise ConfigError(f"{at}.token: expected a string of at least 16 characters")
        identity = entry.get("certificate_identity")
        if identity is not None and (not isinstance(identity, str) or not identity.strip()):
            raise ConfigError(f"{at}.certificate_identity: expected a non-empty string")
        if token is None and identity is None:
            raise ConfigError(f"{at}: needs a token or a certificate_identity")
        callers.append(Caller(name.strip(), frozenset(roles), token, identity))
    for i, caller in enumerate(callers):
        for j, earlier in enumerate(callers[:i]):
            if caller.name == earlier.name:
                raise ConfigError(f"callers[{i}].name: duplicate of callers[{j}]")
            if caller.token is not None and caller.token == earlier.token:
                raise ConfigError(f"callers[{i}].token: the same token as callers[{j}]")
            if (
                caller.certificate_identity is not None
                and caller.certificate_identity == earlier.certificate_identity
            ):
                raise ConfigError(f"callers[{i}].certificate_identity: duplicate of callers[{j}]")
    return tuple(callers)
