"""The process's settings, each declared once: its variable, default, minimum and meaning
sit on its field of ``Settings`` (as envoyproxy/ratelimit declares its settings), and
``load_settings`` reads every declared field from the environment by that declaration.

The files two variables name are read here too and kept beside the settings: the policy
(``QUOTA_AUTHORITY_CONFIG``, ``policy``) and the callers (``QUOTA_AUTHORITY_CALLERS_FILE``,
``api.callers``). Everything is validated at start; anything wrong raises ``ConfigError``
naming the offending key. The README's and docs/operations.md's tables of variables are
checked against these declarations (tests/test_docs.py).

Any other ``QUOTA_AUTHORITY_*`` variable is refused too, naming the nearest known name: a
misspelled setting would otherwise be ignored, and ``QUOTA_AUTHORITY_DATABSE_URL=…`` would
serve an embedded PostgreSQL instead of the database meant. The few variables of that
prefix that the project's own tools read, and that are no setting, are listed once in
``NOT_SETTINGS``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api.callers import Caller, load_callers
from .errors import ConfigError
from .policy import Policy, load_policy
from .store.distribution import SHARD_COUNT

__all__ = [
    "NOT_SETTINGS",
    "PREFIX",
    "Settings",
    "Variable",
    "documented_default",
    "load_settings",
    "unsafe_listen",
    "variables",
    "written",
]


@dataclass(frozen=True)
class Variable:
    """How one environment variable sets one field of ``Settings``."""

    # Its name, QUOTA_AUTHORITY_*.
    name: str
    # What it means, in one line (the README's table says it in these or more words).
    doc: str
    # The smallest accepted value of a number; None for other kinds.
    minimum: float | None = None
    # The accepted values of a word, compared case-insensitively; None for free text.
    choices: tuple[str, ...] | None = None
    # Checks and converts the (stripped, non-empty) text; raises ConfigError. None: by type.
    parse: Callable[[str, str], Any] | None = None


def _variable(default: Any, name: str, doc: str, **how: Any) -> Any:
    return field(default=default, metadata={"variable": Variable(name, doc, **how)})


def _host_port(key: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return value


def _postgres_url(key: str, value: str) -> str:
    if not value.startswith(("postgresql", "postgres:")):
        raise ConfigError(f"{key}: expected a postgresql:// URL")
    return value


def _existing_file(key: str, value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{key}: no such file {value!r}")
    return path


@dataclass(frozen=True)
class Settings:
    """Everything the process needs; ``load_settings`` builds it from the environment."""

    listen: str = _variable(
        "127.0.0.1:50051",
        "QUOTA_AUTHORITY_LISTEN",
        "host:port the gRPC server listens on",
        parse=_host_port,
    )
    database_url: str | None = _variable(
        None,
        "QUOTA_AUTHORITY_DATABASE_URL",
        "PostgreSQL URL (postgresql://…); when unset, an embedded PostgreSQL is started",
        parse=_postgres_url,
    )
    data_dir: Path = _variable(
        Path(".quota-authority"),
        "QUOTA_AUTHORITY_DATA_DIR",
        "directory of the embedded PostgreSQL's data; processes that share it share one server",
    )
    config_path: Path | None = _variable(
        None,
        "QUOTA_AUTHORITY_CONFIG",
        "path of the TOML policy file; when unset, the built-in defaults apply",
    )
    log_level: str = _variable(
        "INFO",
        "QUOTA_AUTHORITY_LOG_LEVEL",
        "DEBUG, INFO, WARNING or ERROR; logs are JSON lines on stderr",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    db_pool_size: int = _variable(
        10,
        "QUOTA_AUTHORITY_DB_POOL_SIZE",
        "database connections each server process keeps open",
        minimum=1,
    )
    lock_timeout_ms: int = _variable(
        2000,
        "QUOTA_AUTHORITY_LOCK_TIMEOUT_MS",
        "longest wait for a row lock before answering UNAVAILABLE",
        minimum=1,
    )
    statement_timeout_ms: int = _variable(
        5000,
        "QUOTA_AUTHORITY_STATEMENT_TIMEOUT_MS",
        "longest any one SQL statement may run",
        minimum=1,
    )
    max_deadline_ms: int = _variable(
        10_000,
        "QUOTA_AUTHORITY_MAX_DEADLINE_MS",
        "longest a call may run; a call with no or a longer deadline gets this one",
        minimum=1,
    )
    shutdown_grace_s: float = _variable(
        10.0,
        "QUOTA_AUTHORITY_SHUTDOWN_GRACE_S",
        "seconds in-flight calls get to finish after SIGTERM",
        minimum=0,
    )
    drain_delay_s: float = _variable(
        0.0,
        "QUOTA_AUTHORITY_DRAIN_DELAY_S",
        "seconds a stopping server still serves while health reports NOT_SERVING",
        minimum=0,
    )
    health_interval_s: float = _variable(
        2.0,
        "QUOTA_AUTHORITY_HEALTH_INTERVAL_S",
        "seconds between database health probes",
        minimum=0.1,
    )
    hold_sweep_interval_s: float = _variable(
        1.0,
        "QUOTA_AUTHORITY_HOLD_SWEEP_INTERVAL_S",
        "seconds between rounds of the sweep that expires holds not confirmed in time (R16); "
        "a hold expires at most about this long after its hold_expires_at",
        minimum=0.05,
    )
    upkeep_interval_s: float = _variable(
        3600.0,
        "QUOTA_AUTHORITY_UPKEEP_INTERVAL_S",
        "seconds between rounds of storage upkeep (partitions and retention) after the first",
        minimum=1,
    )
    max_message_bytes: int = _variable(
        1 << 20,
        "QUOTA_AUTHORITY_MAX_MESSAGE_BYTES",
        "largest request or response; a larger request is refused with RESOURCE_EXHAUSTED",
        minimum=1024,
    )
    max_concurrent_rpcs: int = _variable(
        1000,
        "QUOTA_AUTHORITY_MAX_CONCURRENT_RPCS",
        "calls served at once per process; more are refused with RESOURCE_EXHAUSTED",
        minimum=1,
    )
    max_connection_age_s: float = _variable(
        0.0,
        "QUOTA_AUTHORITY_MAX_CONNECTION_AGE_S",
        "seconds before a client connection is asked to reconnect (spreads clients onto new "
        "replicas); 0 never",
        minimum=0,
    )
    tls_cert_file: Path | None = _variable(
        None,
        "QUOTA_AUTHORITY_TLS_CERT_FILE",
        "server certificate chain (PEM); with the key, the port serves TLS only",
        parse=_existing_file,
    )
    tls_key_file: Path | None = _variable(
        None,
        "QUOTA_AUTHORITY_TLS_KEY_FILE",
        "the certificate's private key (PEM); set both or neither",
        parse=_existing_file,
    )
    tls_client_ca_file: Path | None = _variable(
        None,
        "QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE",
        "CA bundle (PEM) for client certificates; when set, every client must present one",
        parse=_existing_file,
    )
    callers_file: Path | None = _variable(
        None,
        "QUOTA_AUTHORITY_CALLERS_FILE",
        "the callers and their roles; when unset, calls are not authenticated",
        parse=_existing_file,
    )
    allow_unauthenticated_remote: bool = _variable(
        False,
        "QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE",
        "true lets the server listen beyond loopback without a callers file",
    )
    allow_plaintext_tokens: bool = _variable(
        False,
        "QUOTA_AUTHORITY_ALLOW_PLAINTEXT_TOKENS",
        "true lets bearer tokens travel without TLS on an address beyond loopback",
    )
    http_listen: str | None = _variable(
        None,
        "QUOTA_AUTHORITY_HTTP_LISTEN",
        "host:port serving every RPC over HTTP with JSON bodies too (docs/http.md), with the "
        "gRPC port's authentication, TLS and limits; when unset, none is served",
        parse=_host_port,
    )
    metrics_listen: str | None = _variable(
        None,
        "QUOTA_AUTHORITY_METRICS_LISTEN",
        "host:port serving Prometheus metrics at /metrics; when unset, none are served",
        parse=_host_port,
    )
    tracing: str = _variable(
        "off",
        "QUOTA_AUTHORITY_TRACING",
        "off or otlp: otlp exports traces over OTLP/gRPC, configured by the standard OTEL_* "
        "variables (endpoint, sampler, service name)",
        choices=("off", "otlp"),
    )
    event_loop: str = _variable(
        "uvloop",
        "QUOTA_AUTHORITY_EVENT_LOOP",
        "uvloop or asyncio (the standard loop)",
        choices=("uvloop", "asyncio"),
    )
    batch_max_size: int = _variable(
        64,
        "QUOTA_AUTHORITY_BATCH_MAX_SIZE",
        "most CheckAndConsume calls decided in one transaction",
        minimum=1,
    )
    batch_max_in_flight: int = _variable(
        1,
        "QUOTA_AUTHORITY_BATCH_MAX_IN_FLIGHT",
        "most batch transactions open at once per process",
        minimum=1,
    )
    batch_fill_wait_ms: float = _variable(
        2.0,
        "QUOTA_AUTHORITY_BATCH_FILL_WAIT_MS",
        "under load, most milliseconds a short batch waits for more calls; 0 never waits",
        minimum=0,
    )
    distribute: bool = _variable(
        False,
        "QUOTA_AUTHORITY_DISTRIBUTE",
        "true distributes the schema by seller_id when migrating on a Citus coordinator; "
        "no effect on plain PostgreSQL",
    )
    shard_count: int = _variable(
        SHARD_COUNT,  # declared beside what it shapes (store.distribution), for its callers too
        "QUOTA_AUTHORITY_SHARD_COUNT",
        "shards a schema is distributed into when QUOTA_AUTHORITY_DISTRIBUTE first "
        "distributes it (about one or two per worker core); a distributed schema keeps its own",
        minimum=1,
    )
    seller_batches_in_flight: int = _variable(
        8,
        "QUOTA_AUTHORITY_SELLER_BATCHES_IN_FLIGHT",
        "on a schema distributed by seller_id, most batch transactions (one shard's sellers "
        "each) open at once per process",
        minimum=1,
    )
    outreach_batch_max_items: int = _variable(
        500,
        "QUOTA_AUTHORITY_OUTREACH_BATCH_MAX_ITEMS",
        "most items one BatchCheckAndConsume may hold; more is INVALID_ARGUMENT",
        minimum=1,
    )
    gmv_batch_max_rows: int = _variable(
        1000,
        "QUOTA_AUTHORITY_GMV_BATCH_MAX_ROWS",
        "most rows one BatchRecordGmv may hold; more is INVALID_ARGUMENT",
        minimum=1,
    )
    # The known callers, from callers_file; None serves everyone unauthenticated, which
    # only a loopback listener may do (unsafe_listen).
    callers: tuple[Caller, ...] | None = None
    # The business rules' parameters, from the file at config_path.
    policy: Policy = field(default_factory=Policy)


# How the name of every variable of ours begins, settings and NOT_SETTINGS alike.
PREFIX = "QUOTA_AUTHORITY_"

# Variables of our prefix that are no setting of this process, by what reads them: a shell
# that has them set (to try the client examples, say) must still start the server. Only
# these are let through; docs/operations.md lists them (tests/test_docs.py checks it), and
# tests/test_settings.py that the repository names no other.
NOT_SETTINGS: dict[str, str] = {
    "QUOTA_AUTHORITY_TARGET": "the server address of the Go and TypeScript examples and "
    "interop tests",
    "QUOTA_AUTHORITY_TOKEN": "the bearer token the Go and TypeScript examples send",
    "QUOTA_AUTHORITY_GUARDED_TARGET": "the address of make interop's server with a callers "
    "file (the interop tests' refused AdjustQuota)",
    "QUOTA_AUTHORITY_GUARDED_TOKEN": "the token make interop gives that server's one caller, "
    "with every role but admin",
    "QUOTA_AUTHORITY_RELIABILITY": "'full' runs the reliability suite at full size "
    "(make reliability)",
}


def variables() -> dict[str, Variable]:
    """Each field of ``Settings`` that a variable sets, with its ``Variable``."""
    return {f.name: f.metadata["variable"] for f in dataclasses.fields(Settings) if f.metadata}


def written(value: object) -> str:
    """A setting's value as the docs and error messages write it: ``unset`` for none,
    ``false``, ``10`` for 10.0."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def documented_default(name: str) -> str:
    """The default of field ``name`` as the docs write it (``written``)."""
    return written(next(f.default for f in dataclasses.fields(Settings) if f.name == name))


def _parsed(variable: Variable, kind: Any, raw: str) -> Any:
    """``raw`` (stripped, non-empty) as a value of ``kind``, by ``variable``'s rules."""
    key = variable.name
    if variable.parse is not None:
        return variable.parse(key, raw)
    if variable.choices is not None:
        for choice in variable.choices:
            if raw.lower() == choice.lower():
                return choice
        raise ConfigError(f"{key}: expected one of {', '.join(variable.choices)}, got {raw!r}")
    if kind is bool:
        if raw.lower() not in ("true", "false"):
            raise ConfigError(f"{key}: expected true or false, got {raw!r}")
        return raw.lower() == "true"
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
        if variable.minimum is not None and value < variable.minimum:
            raise ConfigError(f"{key}: must be at least {written(variable.minimum)}, got {raw!r}")
        return value
    if kind is Path:
        return Path(raw)
    return raw


def _refuse_unknown(env: Mapping[str, str]) -> None:
    """Raise ``ConfigError`` for the first variable of our prefix that is neither a setting
    nor in ``NOT_SETTINGS``, naming the nearest known name. One set to an empty string
    counts as unset, as a setting's does."""
    known = sorted({v.name for v in variables().values()} | NOT_SETTINGS.keys())
    for name in sorted(env):
        if name.startswith(PREFIX) and name not in known and env[name].strip():
            # Compared without the prefix they share, which would make any two look alike.
            nearest = difflib.get_close_matches(
                name.removeprefix(PREFIX), [k.removeprefix(PREFIX) for k in known], n=1
            )
            hint = (
                f"did you mean {PREFIX}{nearest[0]}?"
                if nearest
                else "docs/operations.md lists the settings"
            )
            raise ConfigError(f"{name}: unknown variable, not a setting; {hint}")


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default ``os.environ``) and the two files it names. A
    variable set to an empty string counts as unset; any other variable of our prefix that
    is not a setting (nor in ``NOT_SETTINGS``) is refused."""
    env = os.environ if environ is None else environ
    _refuse_unknown(env)
    kinds = typing.get_type_hints(Settings)
    values: dict[str, Any] = {}
    for name, variable in variables().items():
        raw = (env.get(variable.name) or "").strip()
        if raw:
            optional = typing.get_args(kinds[name])  # (T, None) for T | None
            values[name] = _parsed(variable, optional[0] if optional else kinds[name], raw)
        # else: the field's default
    settings = Settings(**values)
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError(
            "QUOTA_AUTHORITY_TLS_CERT_FILE and QUOTA_AUTHORITY_TLS_KEY_FILE: set both or neither"
        )
    if settings.tls_client_ca_file is not None and settings.tls_cert_file is None:
        raise ConfigError(
            "QUOTA_AUTHORITY_TLS_CLIENT_CA_FILE: mutual TLS needs QUOTA_AUTHORITY_TLS_CERT_FILE "
            "and QUOTA_AUTHORITY_TLS_KEY_FILE"
        )
    settings = dataclasses.replace(
        settings,
        callers=load_callers(settings.callers_file) if settings.callers_file else None,
        policy=load_policy(settings.config_path) if settings.config_path else Policy(),
    )
    problem = unsafe_listen(settings)
    if problem:
        raise ConfigError(problem)
    return settings


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve beyond loopback


def unsafe_listen(settings: Settings) -> str | None:
    """Why the server must not start as configured, if it must not.

    - Without callers, anyone who can reach the port could spend any seller's quota, so
      only a loopback address may serve unauthenticated, unless
      ``allow_unauthenticated_remote``.
    - Bearer tokens sent without TLS can be read off the network by anyone on the path, so
      callers with tokens need TLS on an address beyond loopback, unless
      ``allow_plaintext_tokens`` (a mesh that encrypts for us, say).

    The HTTP/JSON port (``http_listen``) serves the same calls, so the same holds for it."""
    listeners = [("QUOTA_AUTHORITY_LISTEN", settings.listen)]
    if settings.http_listen is not None:
        listeners.append(("QUOTA_AUTHORITY_HTTP_LISTEN", settings.http_listen))
    for name, listen in listeners:
        if _loopback(listen):
            continue
        if settings.callers is None:
            if settings.allow_unauthenticated_remote:
                continue
            return (
                f"{name}: {listen} is not a loopback address, and "
                "serving it without authentication would let anyone who reaches it spend any "
                "seller's quota. Set QUOTA_AUTHORITY_CALLERS_FILE, or "
                "QUOTA_AUTHORITY_ALLOW_UNAUTHENTICATED_REMOTE=true to serve it unauthenticated "
                "anyway"
            )
        tokens = any(caller.token is not None for caller in settings.callers)
        if tokens and settings.tls_cert_file is None and not settings.allow_plaintext_tokens:
            return (
                f"QUOTA_AUTHORITY_CALLERS_FILE: callers with bearer tokens, served without TLS "
                f"on {listen}, beyond loopback: anyone on the network path could read "
                "the tokens. Set QUOTA_AUTHORITY_TLS_CERT_FILE and QUOTA_AUTHORITY_TLS_KEY_FILE, "
                "or QUOTA_AUTHORITY_ALLOW_PLAINTEXT_TOKENS=true if the network is encrypted "
                "otherwise"
            )
    return None
