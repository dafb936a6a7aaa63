"""Two peer rate-limit services, to be measured beside our server under the same ghz load.

The benchmark compares quota-authority with what a team would otherwise deploy: Envoy's
ratelimit service (a counter per descriptor in Redis) and gubernator (in-memory buckets
sharded over its peers). This module builds both, pinned, from the Go module proxy into
``.bench/bin``; builds the ghz descriptor sets they lack (neither serves reflection nor ships
its .proto: ``scripts/peers/protoset`` writes them from the protos compiled into their Go
packages); writes ghz call-data files for the benchmark's loads; and runs each peer (and its
Redis) as processes on loopback. ``python scripts/peers.py`` builds, then runs ghz on both
loads against each peer and checks the answers are real.

Both peers are told a limit they never reach: they count every call and answer "allowed",
as our server does under the same loads, so the figures compare the cost of deciding.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench"
PROTOSET_SRC = ROOT / "scripts" / "peers" / "protoset"

# Pinned peers. envoyproxy/ratelimit has tagged no release since v1.4.0 (2019): its main is
# served as pseudo-versions only, this one main at 3fb7025 (2026-01-22), the proxy's newest.
RATELIMIT_PKG = "github.com/envoyproxy/ratelimit/src/service_cmd"
RATELIMIT_VERSION = "v1.4.1-0.20260122083618-3fb702589d36"
GUBERNATOR_PKG = "github.com/gubernator-io/gubernator/v2/cmd/gubernator"
GUBERNATOR_VERSION = "v2.21.0"
# gubernator v2.21.0 (and so the protoset tool) needs Go 1.26.10; the go command fetches this
# toolchain from the module proxy. All three are built with it.
GO_TOOLCHAIN = "go1.27.3"

DOMAIN = "outreach"  # ratelimit's domain, gubernator's limit name
LIMIT = 1_000_000_000  # a week's limit no load reaches: every call is counted and allowed
WEEK_MS = 7 * 24 * 3600 * 1000
SEED = 20260101  # the spread load's order of sellers
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Peer:
    """A peer service: the ghz call that asks it for a decision, and what it promises."""

    name: str
    call: str  # package.Service/Method, as ghz --call takes it
    protoset: Path
    promises: str
    binary: str  # in bench_dir/bin
    proto_file: str  # the call's .proto, as registered in the peer's Go package
    package: str  # what ``go install`` builds, at ``version``
    version: str


RATELIMIT = Peer(
    name="envoy_ratelimit",
    call="envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    protoset=BENCH_DIR / "peers" / "ratelimit.protoset",
    promises=(
        "A fixed-window counter per descriptor value in Redis (INCRBY and EXPIRE, windows "
        "aligned to the epoch), answering OK or OVER_LIMIT. Counts live only as long as Redis "
        "keeps them (here no persistence: a Redis restart forgets them), a retried call counts "
        "twice (no idempotency key), and no decision is recorded (no audit)."
    ),
    binary="service_cmd",
    proto_file="envoy/service/ratelimit/v3/rls.proto",
    package=RATELIMIT_PKG,
    version=RATELIMIT_VERSION,
)
GUBERNATOR = Peer(
    name="gubernator",
    call="pb.gubernator.V1/GetRateLimits",
    protoset=BENCH_DIR / "peers" / "gubernator.protoset",
    promises=(
        "A token or leaky bucket per name and key, held in memory (an LRU cache) by the one "
        "peer that owns the key, the limit sent with every call. A restart, an eviction or a "
        "change of owner forgets it (nothing is written to disk), a retried call counts twice "
        "(no idempotency key), and no decision is recorded (no audit)."
    ),
    binary="gubernator",
    proto_file="gubernator.proto",
    package=GUBERNATOR_PKG,
    version=GUBERNATOR_VERSION,
)
PEERS: tuple[Peer, ...] = (RATELIMIT, GUBERNATOR)

RATELIMIT_CONFIG = f"""\
# Written by scripts/peers.py: one counter per seller, a limit never reached.
domain: {DOMAIN}
descriptors:
  - key: seller
    rate_limit:
      unit: week
      requests_per_unit: {LIMIT}
"""


def _log(message: str) -> None:
    print(f"peers: {message}", file=sys.stderr, flush=True)


# --- build ------------------------------------------------------------------------------


def build(bench_dir: Path) -> None:
    """Install what the peers need, skipping what is already there: redis-server, the two
    peers at their pinned versions, the protosets, ratelimit's runtime config."""
    bin_dir = bench_dir / "bin"
    go_env = {**os.environ, "GOBIN": str(bin_dir), "GOTOOLCHAIN": GO_TOOLCHAIN}
    if shutil.which("redis-server") is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run([*sudo, "apt-get", "update"], apt_env)
        _run([*sudo, "apt-get", "install", "-y", "redis-server"], apt_env)
    for peer in PEERS:
        if _built_version(bin_dir / peer.binary) != peer.version:
            _run(["go", "install", f"{peer.package}@{peer.version}"], go_env)
    tool = bin_dir / "peer-protoset"
    if not tool.exists():
        _run(["go", "build", "-o", str(tool), "."], go_env, cwd=PROTOSET_SRC)
    for peer in PEERS:
        if not peer.protoset.exists():
            peer.protoset.parent.mkdir(parents=True, exist_ok=True)
            _run([str(tool), peer.proto_file, str(peer.protoset)], go_env)
    config = _runtime_root(bench_dir) / "ratelimit" / "config" / f"{DOMAIN}.yaml"
    if not config.exists() or config.read_text() != RATELIMIT_CONFIG:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(RATELIMIT_CONFIG)
        _log(f"wrote {config}")


def _run(command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
    _log(" ".join(command))
    start = time.monotonic()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=sys.stderr)
    _log(f"  done in {time.monotonic() - start:.1f} s")


def _built_version(binary: Path) -> str | None:
    """The main module's version a Go binary was built from (None if there is none)."""
    if not binary.exists():
        return None
    info = subprocess.run(["go", "version", "-m", str(binary)], capture_output=True, text=True)
    for line in info.stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["mod"] and len(fields) >= 3:
            return fields[2]
    return None


def _runtime_root(bench_dir: Path) -> Path:
    return bench_dir / "peers" / "ratelimit-runtime"


# --- loads ------------------------------------------------------------------------------


def call_data(peer: Peer, seller: str, hits: int = 1) -> dict[str, Any]:
    """The request asking ``peer`` to count ``hits`` calls of ``seller``."""
    if peer is RATELIMIT:
        entries = [{"key": "seller", "value": seller}]
        return {"domain": DOMAIN, "descriptors": [{"entries": entries}], "hits_addend": hits}
    request = {
        "name": DOMAIN,
        "unique_key": seller,
        "hits": hits,
        "limit": LIMIT,
        "duration": WEEK_MS,
        "algorithm": "TOKEN_BUCKET",
        "behavior": "BATCHING",  # the default (0): only batches forwards to other peers
    }
    return {"requests": [request]}


def write_loads(
    bench_dir: Path, spread_sellers: list[str], hot_seller: str
) -> dict[str, dict[str, Path]]:
    """ghz --data-file files, by peer and load: "spread" an array of one call per seller in
    a fixed random order (ghz sends an array's items round-robin), "hot" one call."""
    sellers = list(spread_sellers)
    random.Random(SEED).shuffle(sellers)
    (bench_dir / "peers" / "loads").mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Path]] = {}
    for peer in PEERS:
        spread = load_file(bench_dir, peer, "spread")
        spread.write_text(json.dumps([call_data(peer, s) for s in sellers]))
        hot = load_file(bench_dir, peer, "hot")
        hot.write_text(json.dumps(call_data(peer, hot_seller)))
        files[peer.name] = {"spread": spread, "hot": hot}
    return files


def load_file(bench_dir: Path, peer: Peer, load: str) -> Path:
    """Where ``write_loads`` writes ``peer``'s ``load`` ("spread" or "hot")."""
    return bench_dir / "peers" / "loads" / f"{peer.name}-{load}.json"


# --- running ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(peer: Peer, target: str, seller: str, hits: int = 1) -> dict[str, Any]:
    """One direct call to ``peer``, its answer as JSON (proto field names, defaults shown)."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(peer.protoset.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.Add(file)
    service, method = peer.call.split("/")
    rpc = pool.FindServiceByName(service).FindMethodByName(method)
    request_type = message_factory.GetMessageClass(rpc.input_type)
    response_type = message_factory.GetMessageClass(rpc.output_type)
    request = json_format.ParseDict(call_data(peer, seller, hits), request_type())
    with grpc.insecure_channel(target) as channel:
        stub = channel.unary_unary(
            f"/{peer.call}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        response = stub(request, timeout=5)
    answer: dict[str, Any] = json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return answer


def remaining(peer: Peer, answer: dict[str, Any]) -> int:
    """What a real "allowed" answer says is left of the limit; ValueError for any other
    answer (an error, a refusal, ratelimit's "no rule": OK without a limit)."""
    if peer is RATELIMIT:
        [status] = answer["statuses"]
        limit = status.get("current_limit", {}).get("requests_per_unit")
        if answer["overall_code"] == "OK" and limit == LIMIT:
            return int(status["limit_remaining"])
    else:
        [response] = answer["responses"]
        if response["error"] == "" and response["status"] == "UNDER_LIMIT":
            return int(response["remaining"])
    raise ValueError(f"not a real answer: {answer}")


@contextmanager
def running(peer: Peer, bench_dir: Path) -> Iterator[tuple[str, int, tuple[tuple[str, int], ...]]]:
    """Run ``peer`` (and Redis for ratelimit) on free loopback ports until it answers a real
    call; yield its target, its pid and its helpers' (name, pid) ("redis"), whose CPU it
    costs too; stop them all at the end."""
    logs = bench_dir / "peers"
    env = {"PATH": os.environ["PATH"]}
    grpc_port = free_port()
    with ExitStack() as stack:
        procs: dict[Path, subprocess.Popen[bytes]] = {}  # by log file

        def start(name: str, command: list[str], extra: dict[str, str]) -> None:
            log = logs / f"{name}.log"
            procs[log] = stack.enter_context(_process(log, command, env | extra))

        if peer is RATELIMIT:
            redis_port = free_port()
            command = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
            start("redis", [*command, "--save", "", "--appendonly", "no"], {})
            _wait_until(lambda: _redis_ping(redis_port), procs)
            settings = {
                "USE_STATSD": "false",
                "DISABLE_STATS": "true",
                "LOG_LEVEL": "warn",
                "REDIS_SOCKET_TYPE": "tcp",
                "REDIS_TYPE": "SINGLE",
                "REDIS_URL": f"127.0.0.1:{redis_port}",
                "GRPC_HOST": "127.0.0.1",
                "GRPC_PORT": str(grpc_port),
                "HOST": "127.0.0.1",
                "PORT": str(free_port()),
                "DEBUG_HOST": "127.0.0.1",
                "DEBUG_PORT": str(free_port()),
                "RUNTIME_ROOT": str(_runtime_root(bench_dir)),
                "RUNTIME_SUBDIRECTORY": "ratelimit",
                "RUNTIME_APPDIRECTORY": "config",
                "RUNTIME_WATCH_ROOT": "false",  # the root is a plain directory, no symlink swap
            }
        else:
            memberlist = f"127.0.0.1:{free_port()}"
            settings = {
                "GUBER_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
                "GUBER_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
                "GUBER_ADVERTISE_ADDRESS": f"127.0.0.1:{grpc_port}",
                "GUBER_PEER_DISCOVERY_TYPE": "member-list",
                "GUBER_MEMBERLIST_ADDRESS": memberlist,  # advertised
                "GUBER_MEMBERLIST_BIND_ADDRESS": memberlist,  # else it listens on 0.0.0.0:7946
                "GUBER_MEMBERLIST_KNOWN_NODES": memberlist,  # a cluster of itself
                "GUBER_LOG_LEVEL": "warn",
                "OTEL_TRACES_EXPORTER": "none",
            }
        start(peer.name, [str(bench_dir / "bin" / peer.binary)], settings)
        target = f"127.0.0.1:{grpc_port}"
        _wait_until(lambda: _answers(peer, target), procs)
        peer_log = logs / f"{peer.name}.log"
        helpers = tuple((log.stem, p.pid) for log, p in procs.items() if log != peer_log)
        yield target, procs[peer_log].pid, helpers


@contextmanager
def _process(
    log: Path, command: list[str], env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until(
    ready: Callable[[], str | None], procs: dict[Path, subprocess.Popen[bytes]]
) -> None:
    """Poll ``ready`` (None when ready, else why not) until it is, a process exits, or the
    deadline passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while (why := ready()) is not None:
        for log, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{log.stem} exited {proc.returncode}; {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            log = list(procs)[-1]
            raise RuntimeError(f"not ready in {START_TIMEOUT_S:.0f} s: {why}; {log}:\n{_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _redis_ping(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError as e:
        return f"redis: {e}"
    return None if reply.startswith(b"+PONG") else f"redis answered {reply!r}"


def _answers(peer: Peer, target: str) -> str | None:
    try:
        remaining(peer, ask(peer, target, "probe"))
    except (grpc.RpcError, ValueError) as e:
        return f"{peer.name}: {e}"
    return None


# --- smoke ------------------------------------------------------------------------------

SMOKE_S = 5.0  # each smoke run's measured seconds


def main() -> int:
    """Build, then run each peer under both loads with the benchmark's own ghz run, and
    check every answer was OK and every hot call counted."""
    import bench  # the benchmark's ghz settings; it imports this module as ``peers``

    start = time.monotonic()
    build(BENCH_DIR)
    _log(f"build: {time.monotonic() - start:.1f} s")
    hot = "hot-0"
    loads = write_loads(BENCH_DIR, [f"spread-{i:05d}" for i in range(10000)], hot)
    failed = False
    for peer in PEERS:
        with running(peer, BENCH_DIR) as (target, pid, helpers):
            print(f"{peer.name} at {target}, pid {pid}, helpers {helpers}: {peer.call}")
            print(f"  one answer: {json.dumps(ask(peer, target, 'spread-00042'))}")
            results = {}
            for load in loads[peer.name]:
                results[load] = bench.ghz(target, load, SMOKE_S, peer=peer)
                print(f"  {load}: {results[load]}")
                failed |= results[load]["errors"] > 0
            # Every hot call was counted: what is left is the limit less those calls and this.
            counted = LIMIT - remaining(peer, ask(peer, target, hot)) - 1
            made = results["hot"]["requests"]
            print(f"  hot seller: {counted} calls counted, ghz made {made}")
            failed |= counted != made
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
