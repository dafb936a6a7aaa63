"""One typed settings object, read from the environment and the TOML policy file.

Environment (process settings) and ``QUOTA_AUTHORITY_CONFIG`` (the policy: tiers, week,
starter pack, messages, idempotency) are both validated at start; anything wrong raises
``ConfigError`` with a message that names the offending key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

__all__ = [
    "ROLES",
    "Caller",
    "MessagePolicy",
    "Policy",
    "Settings",
    "TierPolicy",
    "WeekPolicy",
    "load_callers",
    "load_policy",
    "load_settings",
    "unsafe_listen",
    "valid_time_zone",
]

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def valid_time_zone(name: str) -> bool:
    """True when ``name`` is an IANA zone this machine's tz database knows."""
    if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


@dataclass(frozen=True)
class TierPolicy:
    """One tier (R1): the GMV that reaches it, its weekly limit and its follower cap."""

    # Tier name reported in QuotaStatus.tier.
    name: str
    # Smallest 30-day GMV (USD cents) that reaches this tier.
    min_gmv_30d_minor: int
    # Weekly new-creator limit; None means unlimited.
    weekly_limit: int | None
    # Largest follower count of a creator the seller may invite; None means no cap.
    max_creator_followers: int | None


DEFAULT_TIERS = (
    TierPolicy("T0", 0, 50, 20_000),
    TierPolicy("T1", 1, 200, 20_000),
    TierPolicy("T2", 200_000, 500, 1_000_000),
    TierPolicy("T3", 5_000_000, None, None),
)


@dataclass(frozen=True)
class WeekPolicy:
    """When weeks start (R2)."""

    # Weekday the week starts on, 0 = Monday ... 6 = Sunday.
    refresh_weekday: int = 6
    # Local time of day the week starts at.
    refresh_time: time = time(0, 0)
    # IANA zone for sellers that never set one.
    default_time_zone: str = "UTC"


@dataclass(frozen=True)
class MessagePolicy:
    """R6."""

    # Messages to an unconnected creator per week before a reply is needed.
    max_before_reply: int = 5


@dataclass(frozen=True)
class Policy:
    """The business rules' parameters, from the TOML file (defaults: docs/rules.md#defaults)."""

    # Tiers ordered by min_gmv_30d_minor; the first starts at 0.
    tiers: tuple[TierPolicy, ...] = DEFAULT_TIERS
    # Week boundaries.
    week: WeekPolicy = field(default_factory=WeekPolicy)
    # One-time starter pack size (R10).
    starter_pack_size: int = 1000
    # Messages before reply (R6).
    messages: MessagePolicy = field(default_factory=MessagePolicy)
    # Days a request_id is kept for replay (R11); at least 14.
    idempotency_retention_days: int = 14


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


@dataclass(frozen=True)
class Settings:
    """Everything the process needs; ``load_settings`` builds it from the environment."""

    # host:port the gRPC server listens on (QUOTA_AUTHORITY_LISTEN).
    listen: str = "127.0.0.1:50051"
    # PostgreSQL URL; None starts the embedded server (QUOTA_AUTHORITY_DATABASE_URL).
    database_url: str | None = None
    # Directory of the embedded PostgreSQL's data (QUOTA_AUTHORITY_DATA_DIR).
    data_dir: Path = Path(".quota-authority")
    # Path of the TOML policy file, if any (QUOTA_AUTHORITY_CONFIG).
    config_path: Path | None = None
    # Log level: DEBUG, INFO, WARNING or ERROR (QUOTA_AUTHORITY_LOG_LEVEL).
    log_level: str = "INFO"
    # Database connections kept open by each server process (QUOTA_AUTHORITY_DB_POOL_SIZE).
    db_pool_size: int = 10
    # Longest wait for a row lock before answering UNAVAILABLE (QUOTA_AUTHORITY_LOCK_TIMEOUT_MS).
    lock_timeout_ms: int = 2000
    # Longest any one statement may run (QUOTA_AUTHORITY_STATEMENT_TIMEOUT_MS).
    statement_timeout_ms: int = 5000
    # Longest a call may run; calls with no or a longer deadline get this one
    # (QUOTA_AUTHORITY_MAX_DEADLINE_MS).
    max_deadline_ms: int = 10_000
    # Seconds in-flight calls get to finish on SIGTERM (QUOTA_AUTHORITY_SHUTDOWN_GRACE_S).
    shutdown_grace_s: float = 10.0
    # Seconds between database health probes (QUOTA_AUTHORITY_HEALTH_INTERVAL_S).
    health_interval_s: float = 2.0
    # Largest request or response, in bytes (QUOTA_AUTHORITY_MAX_MESSAGE_BYTES).
    max_message_bytes: int = 1 << 20
    # Calls served at once; more get RESOURCE_EXHAUSTED (QUOTA_AUTHORITY_MAX_CONCURRENT_RPCS).
    max_concurrent_rpcs: int = 1000
    # Seconds before a client connection is asked to reconnect, so clients spread onto new
    # replicas behind DNS or an L4 balancer; 0 never (QUOTA_AUTHORITY_MAX_CONNECTION_AGE_S).
    max_connection_age_s: float = 0.0
    # Server certificate chain, PEM; with tls_key_file, serves TLS (QUOTA_AUTHORITY_TLS_CERT_FILE).
    tls_cert_file: Path | None = None
    # Private key of tls_cert_file, PEM (QUOTA_AUTHORITY_TLS_KEY_FILE).
    tls_key_file: Path | None = None
    # CA bundle that signs client certificates; set, clients must present one (mutual TLS)
    # (QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE).
    tls_client_ca_file: Path | None = None
    # Known callers and their roles; None serves everyone unauthenticated, which only a
    # loopback listener may do (QUOTA_AUTHORITY_CALLERS_FILE, read by load_callers).
    callers: tuple[Caller, ...] | None = None
    # Serve unauthenticated beyond loopback anyway (QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE).
    allow_unauthenticated_remote: bool = False
    # host:port serving Prometheus metrics at /metrics; None serves none
    # (QUOTA_AUTHORITY_METRICS_LISTEN).
    metrics_listen: str | None = None
    # asyncio event loop: "uvloop" (faster) or "asyncio" (QUOTA_AUTHORITY_EVENT_LOOP).
    event_loop: str = "uvloop"
    # Most CheckAndConsume calls decided in one transaction (QUOTA_AUTHORITY_BATCH_MAX_SIZE).
    batch_max_size: int = 64
    # Most batch transactions open at once per process (QUOTA_AUTHORITY_BATCH_MAX_IN_FLIGHT).
    batch_max_in_flight: int = 1
    # Under load, most ms a batch waits to fill; 0 never (QUOTA_AUTHORITY_BATCH_FILL_WAIT_MS).
    batch_fill_wait_ms: float = 2.0
    # The business rules' parameters (from the file at config_path).
    policy: Policy = field(default_factory=Policy)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default ``os.environ``) and the policy file it names."""
    env = os.environ if environ is None else environ
    defaults = Settings()

    def text(key: str, default: str) -> str:
        value = env.get(key, "").strip()
        return value or default

    def number(key: str, default: float, kind: type[int] | type[float], minimum: float) -> Any:
        raw = env.get(key, "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {raw!r}")
        return value

    def host_port(key: str, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{key}: expected host:port, got {value!r}")
        return value

    listen = host_port("QUOTA_AUTHORITY_LISTEN", text("QUOTA_AUTHORITY_LISTEN", defaults.listen))
    metrics_listen = env.get("QUOTA_AUTHORITY_METRICS_LISTEN", "").strip() or None
    if metrics_listen is not None:
        host_port("QUOTA_AUTHORITY_METRICS_LISTEN", metrics_listen)
    database_url = env.get("QUOTA_AUTHORITY_DATABASE_URL", "").strip() or None
    if database_url is not None and not database_url.startswith(("postgresql", "postgres:")):
        raise ConfigError("QUOTA_AUTHORITY_DATABASE_URL: expected a postgresql:// URL")
    log_level = text("QUOTA_AUTHORITY_LOG_LEVEL", defaults.log_level).upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"QUOTA_AUTHORITY_LOG_LEVEL: unknown level {log_level!r}")
    event_loop = text("QUOTA_AUTHORITY_EVENT_LOOP", defaults.event_loop).lower()
    if event_loop not in ("uvloop", "asyncio"):
        raise ConfigError(
            f"QUOTA_AUTHORITY_EVENT_LOOP: expected uvloop or asyncio, got {event_loop!r}"
        )
    config = env.get("QUOTA_AUTHORITY_CONFIG", "").strip()
    config_path = Path(config) if config else None

    def readable_file(key: str) -> Path | None:
        raw = env.get(key, "").strip()
        if not raw:
            return None
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"{key}: no such file {raw!r}")
        return path

    tls_cert_file = readable_file("QUOTA_AUTHORITY_TLS_CERT_FILE")
    tls_key_file = readable_file("QUOTA_AUTHORITY_TLS_KEY_FILE")
    tls_client_ca_file = readable_file("QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE")
    if (tls_cert_file is None) != (tls_key_file is None):
        raise ConfigError(
            "QUOTA_AUTHORITY_TLS_CERT_FILE and QUOTA_AUTHORITY_TLS_KEY_FILE: set both or neither"
        )
    if tls_client_ca_file is not None and tls_cert_file is None:
        raise ConfigError(
            "QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE: mutual TLS needs QUOTA_AUTHORITY_TLS_CERT_FILE "
            "and QUOTA_AUTHORITY_TLS_KEY_FILE"
        )
    callers_file = readable_file("QUOTA_AUTHORITY_CALLERS_FILE")
    allow_remote = text("QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE", "false").lower()
    if allow_remote not in ("true", "false"):
        raise ConfigError(
            f"QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE: expected true or false, "
            f"got {allow_remote!r}"
        )
    settings = Settings(
        listen=listen,
        database_url=database_url,
        data_dir=Path(text("QUOTA_AUTHORITY_DATA_DIR", str(defaults.data_dir))),
        config_path=config_path,
        log_level=log_level,
        db_pool_size=number("QUOTA_AUTHORITY_DB_POOL_SIZE", defaults.db_pool_size, int, 1),
        lock_timeout_ms=number("QUOTA_AUTHORITY_LOCK_TIMEOUT_MS", defaults.lock_timeout_ms, int, 1),
        statement_timeout_ms=number(
            "QUOTA_AUTHORITY_STATEMENT_TIMEOUT_MS", defaults.statement_timeout_ms, int, 1
        ),
        max_deadline_ms=number("QUOTA_AUTHORITY_MAX_DEADLINE_MS", defaults.max_deadline_ms, int, 1),
        shutdown_grace_s=number(
            "QUOTA_AUTHORITY_SHUTDOWN_GRACE_S", defaults.shutdown_grace_s, float, 0
        ),
        health_interval_s=number(
            "QUOTA_AUTHORITY_HEALTH_INTERVAL_S", defaults.health_interval_s, float, 0.1
        ),
        max_message_bytes=number(
            "QUOTA_AUTHORITY_MAX_MESSAGE_BYTES", defaults.max_message_bytes, int, 1024
        ),
        max_concurrent_rpcs=number(
            "QUOTA_AUTHORITY_MAX_CONCURRENT_RPCS", defaults.max_concurrent_rpcs, int, 1
        ),
        max_connection_age_s=number(
            "QUOTA_AUTHORITY_MAX_CONNECTION_AGE_S", defaults.max_connection_age_s, float, 0
        ),
        event_loop=event_loop,
        batch_max_size=number("QUOTA_AUTHORITY_BATCH_MAX_SIZE", defaults.batch_max_size, int, 1),
        batch_max_in_flight=number(
            "QUOTA_AUTHORITY_BATCH_MAX_IN_FLIGHT", defaults.batch_max_in_flight, int, 1
        ),
        batch_fill_wait_ms=number(
            "QUOTA_AUTHORITY_BATCH_FILL_WAIT_MS", defaults.batch_fill_wait_ms, float, 0
        ),
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        tls_client_ca_file=tls_client_ca_file,
        callers=load_callers(callers_file) if callers_file else None,
        allow_unauthenticated_remote=allow_remote == "true",
        metrics_listen=metrics_listen,
        policy=load_policy(config_path) if config_path else Policy(),
    )
    problem = unsafe_listen(settings)
    if problem:
        raise ConfigError(problem)
    return settings


def unsafe_listen(settings: Settings) -> str | None:
    """Why the server must not start as configured, if it must not: without callers, anyone
    who can reach the port could consume any seller's quota, so only a loopback address may
    serve unauthenticated, unless ``allow_unauthenticated_remote`` says otherwise."""
    if settings.callers is not None or settings.allow_unauthenticated_remote:
        return None
    host = settings.listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve beyond loopback
    return (
        f"QUOTA_AUTHORITY_LISTEN: {settings.listen} is not a loopback address, and serving it "
        "without authentication would let anyone who reaches it spend any seller's quota. Set "
        "QUOTA_AUTHORITY_CALLERS_FILE, or QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE=true "
        "to serve it unauthenticated anyway"
    )


def load_callers(path: Path) -> tuple[Caller, ...]:
    """The callers in the TOML file at ``path``: ``[[callers]]`` tables with ``name``,
    ``roles`` and a ``token`` (at least 16 characters) or a ``certificate_identity``."""
    where = "QUOTA_AUTHORITY_CALLERS_FILE"
    data = _read_toml(path, where)
    _only(data, where, {"callers"})
    callers: list[Caller] = []
    for at, entry in _array_of_tables(data.get("callers", []), "callers", non_empty=False):
        _only(entry, at, {"name", "roles", "token", "certificate_identity"})
        name = _name(entry, at)
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


def load_policy(path: Path) -> Policy:
    """The policy in the TOML file at ``path``; missing sections keep their defaults."""
    return policy_from_mapping(_read_toml(path, "QUOTA_AUTHORITY_CONFIG"))


def _read_toml(path: Path, key: str) -> dict[str, Any]:
    """The TOML document at ``path``; errors name ``key``, the variable that gave the path."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{key}: no such file {str(path)!r}") from None
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{key}: {path} is not valid TOML: {e}") from None


def _array_of_tables(raw: Any, key: str, *, non_empty: bool) -> list[tuple[str, Mapping[str, Any]]]:
    """Each table of the ``[[key]]`` array ``raw``, with the path errors name it by."""
    if not isinstance(raw, list) or (non_empty and not raw):
        kind = "a non-empty array" if non_empty else "an array"
        raise ConfigError(f"{key}: expected {kind} of tables ([[{key}]])")
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}[{i}]: expected a table")
        tables.append((f"{key}[{i}]", entry))
    return tables


def _name(table: Mapping[str, Any], where: str) -> str:
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: expected a non-empty string")
    return name


def policy_from_mapping(data: Mapping[str, Any]) -> Policy:
    """The policy in an already-parsed TOML document."""
    known = {"tiers", "week", "starter_pack", "messages", "idempotency"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{key}: unknown section (expected one of {sorted(known)})")
    defaults = Policy()
    tiers = _tiers(data["tiers"]) if "tiers" in data else defaults.tiers
    week = _week(_table(data, "week"))
    starter = _table(data, "starter_pack")
    _only(starter, "starter_pack", {"size"})
    messages = _table(data, "messages")
    _only(messages, "messages", {"max_before_reply"})
    idempotency = _table(data, "idempotency")
    _only(idempotency, "idempotency", {"retention_days"})
    return Policy(
        tiers=tiers,
        week=week,
        starter_pack_size=_int(starter, "starter_pack.size", "size", defaults.starter_pack_size),
        messages=MessagePolicy(
            max_before_reply=_int(
                messages,
                "messages.max_before_reply",
                "max_before_reply",
                defaults.messages.max_before_reply,
            )
        ),
        idempotency_retention_days=_int(
            idempotency,
            "idempotency.retention_days",
            "retention_days",
            defaults.idempotency_retention_days,
            minimum=14,
        ),
    )


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a table")
    return value


def _only(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of {sorted(allowed)})")


def _int(
    table: Mapping[str, Any], path: str, key: str, default: int | None, minimum: int = 0
) -> Any:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{path}: must be at least {minimum}, got {value}")
    return value


def _tiers(raw: Any) -> tuple[TierPolicy, ...]:
    tiers: list[TierPolicy] = []
    for where, entry in _array_of_tables(raw, "tiers", non_empty=True):
        _only(entry, where, {"name", "min_gmv_30d_minor", "weekly_limit", "max_creator_followers"})
        name = _name(entry, where)
        if "min_gmv_30d_minor" not in entry:
            raise ConfigError(f"{where}.min_gmv_30d_minor: required")
        tiers.append(
            TierPolicy(
                name=name,
                min_gmv_30d_minor=_int(entry, f"{where}.min_gmv_30d_minor", "min_gmv_30d_minor", 0),
                weekly_limit=_int(entry, f"{where}.weekly_limit", "weekly_limit", None),
                max_creator_followers=_int(
                    entry, f"{where}.max_creator_followers", "max_creator_followers", None
                ),
            )
        )
    for i in range(1, len(tiers)):
        if tiers[i].min_gmv_30d_minor <= tiers[i - 1].min_gmv_30d_minor:
            raise ConfigError(
                f"tiers[{i}].min_gmv_30d_minor: tiers must be listed by strictly "
                "increasing min_gmv_30d_minor"
            )
    if tiers[0].min_gmv_30d_minor != 0:
        raise ConfigError("tiers[0].min_gmv_30d_minor: the first tier must start at 0")
    names = [t.name for t in tiers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"tiers[{i}].name: duplicate tier name {name!r}")
    return tuple(tiers)


def _week(table: Mapping[str, Any]) -> WeekPolicy:
    _only(table, "week", {"refresh_weekday", "refresh_time", "default_time_zone"})
    defaults = WeekPolicy()
    weekday = defaults.refresh_weekday
    if "refresh_weekday" in table:
        raw = table["refresh_weekday"]
        if not isinstance(raw, str) or raw.strip().lower() not in WEEKDAYS:
            raise ConfigError(
                f"week.refresh_weekday: expected a weekday name such as 'sunday', got {raw!r}"
            )
        weekday = WEEKDAYS.index(raw.strip().lower())
    refresh_time = defaults.refresh_time
    if "refresh_time" in table:
        raw = table["refresh_time"]
        if isinstance(raw, time):
            refresh_time = raw
        elif isinstance(raw, str):
            try:
                refresh_time = time.fromisoformat(raw)
            except ValueError:
                raise ConfigError(
                    f"week.refresh_time: expected HH:MM or HH:MM:SS, got {raw!r}"
                ) from None
        else:
            raise ConfigError(f"week.refresh_time: expected HH:MM or HH:MM:SS, got {raw!r}")
        if refresh_time.tzinfo is not None:
            raise ConfigError("week.refresh_time: must be a local time without an offset")
    zone = table.get("default_time_zone", defaults.default_time_zone)
    if not isinstance(zone, str) or not valid_time_zone(zone):
        raise ConfigError(f"week.default_time_zone: unknown IANA time zone {zone!r}")
    return WeekPolicy(refresh_weekday=weekday, refresh_time=refresh_time, default_time_zone=zone)
