"""Traces, end to end: a server process with ``QUOTA_AUTHORITY_TRACING=otlp`` exports to a
real OTLP/gRPC receiver this test starts (scripts/otlp_sink.py), and callers trace with
their own OpenTelemetry SDK, which ``QuotaClient`` propagates (W3C ``traceparent``).

What operators rely on (docs/operations.md, Traces): each call's server span continues the
caller's trace; each batch transaction is a span of its own, linked to every call it
decided, with its SQL statements as children; the spans carry seller, action and reason,
never a token or the request's other fields; a log line written inside a call names its
trace and span. And with tracing off, OpenTelemetry is never even imported.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from http_json import http_call
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind
from servers import ServerProcess, server_process
from support import command_environment, free_port

from quota_authority.client import QuotaClient
from quota_authority.tracing import BATCH_SPAN, SERVICE_NAME, Sampling

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from otlp_sink import OtlpSink, Span, otlp_sink  # noqa: E402

CALL_SPAN = "quota_authority.v1.QuotaAuthorityService/CheckAndConsume"
TOKEN = "token-of-the-traced-caller-" + "s3cr3t" * 4
CONCURRENT_CALLS = 40
SPANS_WITHIN_S = 60.0


@dataclass
class TracedServer:
    sink: OtlpSink
    server: ServerProcess
    http_port: int | None = None  # its HTTP/JSON port, if it has one


@pytest.fixture(scope="module")
def sink() -> Iterator[tuple[OtlpSink, str]]:
    """The receiver, and its endpoint."""
    with otlp_sink() as receiver:
        yield receiver


@asynccontextmanager
async def traced_server(
    database_url: str, directory: Path, endpoint: str, **environment: str
) -> AsyncIterator[ServerProcess]:
    """A server process tracing as ``environment`` (``OTEL_TRACES_SAMPLER``…) says,
    exporting to ``endpoint`` every 100 ms, with one caller who sends ``TOKEN``."""
    callers = directory / "callers.toml"
    callers.write_text(
        f'[[callers]]\nname = "traced"\nroles = ["outreach", "reader"]\ntoken = "{TOKEN}"\n'
    )
    async with server_process(
        database_url,
        directory / "server.log",
        QUOTA_AUTHORITY_TRACING="otlp",
        QUOTA_AUTHORITY_CALLERS_FILE=str(callers),
        QUOTA_AUTHORITY_LOG_LEVEL="INFO",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",
        **environment,
    ) as server:
        yield server


@pytest.fixture(scope="module")
async def traced(
    database_url: str, sink: tuple[OtlpSink, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TracedServer]:
    """A server process tracing every call (always_on), exporting to ``sink``, with an
    HTTP/JSON port too."""
    directory = tmp_path_factory.mktemp("traced")
    http_port = free_port()
    async with traced_server(
        database_url,
        directory,
        sink[1],
        OTEL_TRACES_SAMPLER="always_on",
        QUOTA_AUTHORITY_HTTP_LISTEN=f"127.0.0.1:{http_port}",
    ) as server:
        yield TracedServer(sink[0], server, http_port)


@pytest.fixture(scope="module")
async def one_percent(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[TracedServer]:
    """A server process sampling as production would (``parentbased_traceidratio``, 1%),
    exporting to a receiver of its own. The tests send it calls with a caller's trace
    only, sampled or not: a parent-based sampler decides those, never the 1% draw."""
    directory = tmp_path_factory.mktemp("one_percent")
    with otlp_sink() as (receiver, endpoint):
        async with traced_server(
            database_url,
            directory,
            endpoint,
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0.01",
        ) as server:
            yield TracedServer(receiver, server)


def caller_tracer(sampled: bool = True) -> TracerProvider:
    """The caller's own tracing: an SDK provider of its own (not made global here), whose
    spans the client propagates, ``sampled`` or not (the ``traceparent``'s flag); they are
    not exported, only their ids matter."""
    return TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)


def describe(trace: list[Span], root: Span) -> str:
    """A trace as text: each span under its parent, with its links."""
    lines: list[str] = []

    def show(span: Span, depth: int) -> None:
        indent = "  " * depth
        statement = str(span.attributes.get("db.statement", ""))[:48]
        lines.append(
            f"{indent}{span.name} [{span.span_id}]" + (f": {statement}…" * bool(statement))
        )
        for trace_id, span_id, _ in span.links[:3]:
            lines.append(f"{indent}    link → trace {trace_id}, span {span_id}")
        if len(span.links) > 3:
            lines.append(f"{indent}    … and {len(span.links) - 3} links more")
        for child in sorted(
            (s for s in trace if s.parent_span_id == span.span_id), key=lambda s: s.start_ns
        ):
            show(child, depth + 1)

    show(root, 0)
    return "\n".join(lines)


def every_value(span: Span) -> list[str]:
    values = [str(v) for v in span.attributes.values()]
    for _, _, attributes in span.links:
        values += [str(v) for v in attributes.values()]
    return values


async def test_calls_continue_their_callers_traces_and_their_batches_link_to_them(
    traced: TracedServer,
) -> None:
    tracer = caller_tracer().get_tracer("caller")
    seller = f"traced-{uuid.uuid4().hex[:12]}"
    creators = [f"creator-{uuid.uuid4().hex[:12]}" for _ in range(CONCURRENT_CALLS)]
    callers: dict[str, tuple[str, str]] = {}  # creator -> caller's (trace_id, span_id)

    async with QuotaClient(traced.server.address, token=TOKEN) as client:

        async def call(creator: str) -> None:
            with tracer.start_as_current_span("caller sends an invite") as span:
                context = span.get_span_context()
                callers[creator] = (f"{context.trace_id:032x}", f"{context.span_id:016x}")
                reply = await client.check_and_consume(
                    seller, creator, "invite", creator_follower_count=1200
                )
                assert reply.allowed

        await asyncio.gather(*(call(creator) for creator in creators))

    caller_traces = {trace_id for trace_id, _ in callers.values()}

    def calls_and_their_batches_arrived(spans: list[Span]) -> bool:
        calls = [s for s in spans if s.name == CALL_SPAN and s.trace_id in caller_traces]
        linked = {link[1] for s in spans if s.name == BATCH_SPAN for link in s.links}
        return len(calls) == CONCURRENT_CALLS and {c.span_id for c in calls} <= linked

    spans = traced.sink.wait_for(calls_and_their_batches_arrived, SPANS_WITHIN_S)

    # Each call's server span is the child of its caller's span, in the caller's trace.
    calls = {s.span_id: s for s in spans if s.name == CALL_SPAN and s.trace_id in caller_traces}
    by_caller = {(s.trace_id, s.parent_span_id): s for s in calls.values()}
    assert set(by_caller) == set(callers.values())
    for span in calls.values():
        assert span.kind == SpanKind.SERVER.value + 1  # OTLP numbers kinds from 1 (internal)
        assert span.service_name == SERVICE_NAME
        assert span.attributes["quota_authority.seller_id"] == seller
        assert span.attributes["quota_authority.action"] == "invite"
        assert span.attributes["quota_authority.reason"] == "new_creator"
        assert span.attributes["quota_authority.allowed"] is True
        assert span.attributes["rpc.grpc.status_code"] == 0

    # Each call is linked from exactly one batch span, a root of its own trace; the
    # concurrent calls shared batches.
    batches = [
        s for s in spans if s.name == BATCH_SPAN and any(link[1] in calls for link in s.links)
    ]
    linked = [link for batch in batches for link in batch.links if link[1] in calls]
    assert sorted(span_id for _, span_id, _ in linked) == sorted(calls)
    for trace_id, span_id, attributes in linked:
        assert trace_id == calls[span_id].trace_id
        assert attributes["quota_authority.seller_id"] == seller
        assert attributes["quota_authority.action"] == "invite"
    assert max(len(batch.links) for batch in batches) >= 2, "no batch decided two calls"
    for batch in batches:
        assert batch.parent_span_id == ""
        assert batch.trace_id not in caller_traces
        assert batch.attributes["quota_authority.batch.size"] == len(batch.links)

    # Each batch's SQL statements are its children, recorded without their parameters.
    for batch in batches:
        statements = [
            s for s in spans if s.trace_id == batch.trace_id and s.parent_span_id == batch.span_id
        ]
        assert statements, f"batch {batch.span_id} has no statement spans"
        assert all(s.attributes.get("db.system") == "postgresql" for s in statements)
        texts = [str(s.attributes.get("db.statement", "")) for s in statements]
        # lock_outreach_state on one PostgreSQL; on Citus lock_shard_outreach for a batch of
        # one shard's sellers, lock_seller_outreach for one seller's (store/outreach.py).
        assert any(re.search(r"lock_((seller|shard)_)?outreach", text) for text in texts), texts

    # No token, and no field of a request but its seller and action, anywhere.
    for span in spans:
        for value in every_value(span):
            assert TOKEN not in value, (span.name, value)
            assert not any(creator in value for creator in creators), (span.name, value)

    example = next(b for b in batches if len(b.links) >= 2)
    print(f"\nthe batch of {len(example.links)} calls:")
    print(describe([s for s in spans if s.trace_id == example.trace_id], example))
    first = calls[example.links[0][1]]
    print("\nthe first call it decided, in its caller's trace:")
    print(f"caller sends an invite [{first.parent_span_id}] (the caller's span)")
    print(
        textwrap.indent(describe([s for s in spans if s.trace_id == first.trace_id], first), "  ")
    )


async def test_an_http_call_continues_its_callers_trace_as_a_grpc_call_does(
    traced: TracedServer,
) -> None:
    assert traced.http_port is not None
    seller = f"traced-{uuid.uuid4().hex[:12]}"
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    answer = await http_call(
        traced.http_port,
        "GET",
        f"/v1/sellers/{seller}/status",
        token=TOKEN,
        headers={"traceparent": f"00-{trace_id}-{span_id}-01"},
    )
    assert answer.status == 200

    spans = traced.sink.wait_for(
        lambda spans: any(s.trace_id == trace_id and s.parent_span_id == span_id for s in spans),
        SPANS_WITHIN_S,
    )
    (call,) = [s for s in spans if s.trace_id == trace_id and s.parent_span_id == span_id]
    assert call.name == "quota_authority.v1.QuotaAuthorityService/GetStatus"
    assert call.kind == SpanKind.SERVER.value + 1
    assert call.attributes["quota_authority.seller_id"] == seller
    assert call.attributes["rpc.grpc.status_code"] == 0
    for span in spans:
        assert all(TOKEN not in value for value in every_value(span))


async def test_a_log_line_written_inside_a_call_names_its_trace_and_span(
    traced: TracedServer,
) -> None:
    tracer = caller_tracer().get_tracer("caller")
    async with QuotaClient(traced.server.address, token=TOKEN) as client:
        with tracer.start_as_current_span("caller sends a bad request") as span:
            context = span.get_span_context()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.check_and_consume("", "c1", "message")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trace_id, caller_span = f"{context.trace_id:032x}", f"{context.span_id:016x}"

    (call,) = [
        s
        for s in traced.sink.wait_for(
            lambda spans: any(s.trace_id == trace_id for s in spans), SPANS_WITHIN_S
        )
        if s.trace_id == trace_id
    ]
    assert call.name == CALL_SPAN
    assert call.parent_span_id == caller_span
    assert call.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    lines = [json.loads(line) for line in traced.server.log.read_text().splitlines()]
    refusals = [line for line in lines if line.get("trace_id") == trace_id]
    assert [line["message"] for line in refusals] == ["call refused"]
    assert refusals[0]["span_id"] == call.span_id
    # Lines written outside any call carry no ids.
    assert any(line["message"] == "serving" and "trace_id" not in line for line in lines)


def ids(span: object) -> tuple[str, str]:
    """A caller's span's (trace_id, span_id), in hex as the receiver shows them."""
    context = span.get_span_context()  # type: ignore[attr-defined]
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


async def test_at_a_1pct_sample_sampled_callers_are_traced_and_unsampled_ones_not_at_all(
    one_percent: TracedServer,
) -> None:
    """Calls continuing a sampled trace are sampled even at a 1% ratio; calls continuing
    an unsampled one export nothing; a batch is traced, linked to its sampled calls only,
    when it decided at least one, and not at all when it decided none."""
    sampled_tracer = caller_tracer(sampled=True).get_tracer("caller")
    unsampled_tracer = caller_tracer(sampled=False).get_tracer("caller")
    seller = f"sampled-{uuid.uuid4().hex[:12]}"
    # Four sampled callers among forty, spread over the burst: batches mix them.
    sampled_at = {5, 15, 25, 35}
    sampled: dict[tuple[str, str], str] = {}  # caller's (trace_id, span_id) -> creator
    unsampled: set[str] = set()  # callers' trace ids

    async with QuotaClient(one_percent.server.address, token=TOKEN) as client:

        async def call(index: int) -> None:
            creator = f"creator-{uuid.uuid4().hex[:12]}"
            tracer = sampled_tracer if index in sampled_at else unsampled_tracer
            with tracer.start_as_current_span("caller sends an invite") as span:
                if index in sampled_at:
                    sampled[ids(span)] = creator
                else:
                    unsampled.add(ids(span)[0])
                reply = await client.check_and_consume(
                    seller, creator, "invite", creator_follower_count=1200
                )
                assert reply.allowed

        await asyncio.gather(*(call(index) for index in range(CONCURRENT_CALLS)))
        # One more sampled call, after all the others ended: the server exports spans in
        # the order they end, so once this one's span arrived, any span of the calls
        # before it (of the unsampled ones too, were there any) has arrived.
        with sampled_tracer.start_as_current_span("caller's last call") as last:
            await client.check_and_consume(seller, "creator-last", "message", dry_run=True)
    last_trace = ids(last)[0]

    spans = one_percent.sink.wait_for(
        lambda spans: any(s.trace_id == last_trace for s in spans), SPANS_WITHIN_S
    )
    # Each sampled caller's call is traced, the child of the caller's span.
    calls = {s.span_id: s for s in spans if s.name == CALL_SPAN and s.trace_id != last_trace}
    assert {(s.trace_id, s.parent_span_id) for s in calls.values()} == set(sampled)
    for span in calls.values():
        assert span.attributes["quota_authority.seller_id"] == seller
        assert span.attributes["quota_authority.allowed"] is True
    # An unsampled caller's call left no span at all: no call, no statement.
    assert not [s for s in spans if s.trace_id in unsampled]

    # Each sampled call is linked from one batch span; a batch links to sampled calls
    # only, though it decided unsampled ones too (its size counts them).
    batches = [
        s for s in spans if s.name == BATCH_SPAN and any(link[1] in calls for link in s.links)
    ]
    linked = sorted(link[1] for batch in batches for link in batch.links)
    assert linked == sorted(calls)
    assert any(b.attributes["quota_authority.batch.size"] > len(b.links) for b in batches), [
        (b.attributes["quota_authority.batch.size"], len(b.links)) for b in batches
    ]
    # A batch of unsampled calls only is not traced: every batch span links to a call.
    assert all(s.links for s in spans if s.name == BATCH_SPAN)
    # Statements are traced under sampled calls and batches only: no span is a root but
    # the batches (a statement outside them would be a root of its own).
    roots = [s for s in spans if not s.parent_span_id]
    assert {s.name for s in roots} == {BATCH_SPAN}, [s.name for s in roots]
    for batch in batches:
        assert any(s.parent_span_id == batch.span_id for s in spans), "no statement spans"


async def test_at_a_1pct_sample_log_lines_lead_to_the_trace_of_a_call(
    one_percent: TracedServer,
) -> None:
    """A sampled call's log lines carry its trace_id and span_id; an unsampled call's,
    its caller's trace_id alone (no span of this service exists)."""
    refused: dict[bool, tuple[str, str]] = {}
    async with QuotaClient(one_percent.server.address, token=TOKEN) as client:
        for sampled in (False, True):  # the sampled last: its span arriving ends the wait
            tracer = caller_tracer(sampled).get_tracer("caller")
            with tracer.start_as_current_span("caller sends a bad request") as span:
                refused[sampled] = ids(span)
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await client.check_and_consume("", "c1", "message")
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    sampled_trace, caller_span = refused[True]
    spans = one_percent.sink.wait_for(
        lambda spans: any(s.trace_id == sampled_trace for s in spans), SPANS_WITHIN_S
    )
    (call,) = [s for s in spans if s.trace_id == sampled_trace]
    assert call.parent_span_id == caller_span
    assert not [s for s in spans if s.trace_id == refused[False][0]]

    lines = [json.loads(line) for line in one_percent.server.log.read_text().splitlines()]
    by_trace = {line["trace_id"]: line for line in lines if "trace_id" in line}
    assert by_trace[sampled_trace]["message"] == "call refused"
    assert by_trace[sampled_trace]["span_id"] == call.span_id
    unsampled_line = by_trace[refused[False][0]]
    assert unsampled_line["message"] == "call refused"
    assert "span_id" not in unsampled_line


@pytest.mark.parametrize(
    ("environment", "parent_based", "ratio"),
    [
        ({}, True, 1.0),
        ({"OTEL_TRACES_SAMPLER": "always_on"}, False, 1.0),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, False, 0.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, True, 0.0),
        ({"OTEL_TRACES_SAMPLER": "TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, False, 0.25),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
            True,
            0.01,
        ),
        # As the SDK reads them: a ratio that is none is 1, an unknown sampler the default.
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, False, 1.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}, True, 1.0),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, True, 1.0),
    ],
)
def test_the_sampling_is_the_one_the_otel_variables_configure(
    environment: dict[str, str], parent_based: bool, ratio: float
) -> None:
    sampling = Sampling.from_environment(environment)
    assert (sampling.parent_based, sampling.ratio) == (parent_based, ratio)


def test_a_parent_decides_a_parent_based_sampling_and_its_trace_id_a_ratio() -> None:
    parent_based = Sampling("parentbased_traceidratio", True, 0.01)
    assert parent_based.child(2**64 - 1, sampled=True)
    assert not parent_based.child(0, sampled=False)
    # traceidratio, as the SDK's TraceIdRatioBased: the trace id's lower 64 bits, under
    # ratio × 2⁶⁴, whatever the caller decided.
    ratio = Sampling("traceidratio", False, 0.5)
    assert ratio.child((7 << 64) | (2**63 - 1), sampled=False)
    assert not ratio.child(2**63, sampled=True)
    assert Sampling("always_on", False, 1.0).child(2**64 - 1, sampled=False)
    assert not Sampling("always_off", False, 0.0).child(0, sampled=True)


# Runs a server in-process with tracing off, serves a call, and prints the modules of
# opentelemetry it imported (none, it must be).
_UNTRACED = """
import asyncio, sys, grpc
from quota_authority.clock import SystemClock
from quota_authority.server import QuotaAuthorityServer
from quota_authority.settings import load_settings
from quota_authority.v1 import quota_authority_pb2 as pb, quota_authority_pb2_grpc as pb_grpc

async def main():
    settings = load_settings({"QUOTA_AUTHORITY_LISTEN": "127.0.0.1:0"})
    server = QuotaAuthorityServer(settings, sys.argv[1], SystemClock())
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await pb_grpc.QuotaAuthorityServiceStub(channel).CheckAndConsume(
            pb.CheckAndConsumeRequest(seller_id="untraced", creator_id="c1",
                                      action=pb.ACTION_MESSAGE, dry_run=True))
    await server.stop(grace=0)
    assert reply.allowed
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

asyncio.run(main())
"""


# Runs a server in-process with tracing on and sampling nothing (always_off), serves
# concurrent CheckAndConsume calls (with and without a caller's unsampled traceparent) and a
# GetStatus, and prints how many spans the SDK was asked to start: none, it must be (no call
# span, no batch span, no statement span: each would go through the sampler).
_UNSAMPLED = """
import asyncio, sys, grpc
from quota_authority.clock import SystemClock
from quota_authority.server import QuotaAuthorityServer
from quota_authority.settings import load_settings
from quota_authority.v1 import quota_authority_pb2 as pb, quota_authority_pb2_grpc as pb_grpc

async def main():
    settings = load_settings({"QUOTA_AUTHORITY_LISTEN": "127.0.0.1:0",
                              "QUOTA_AUTHORITY_TRACING": "otlp"})
    server = QuotaAuthorityServer(settings, sys.argv[1], SystemClock())
    port = await server.start()
    sampler = server.tracing._provider.sampler
    asked = []
    should_sample = sampler.should_sample
    sampler.should_sample = lambda *a, **k: asked.append(a[2]) or should_sample(*a, **k)
    parent = (("traceparent", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-00"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        replies = await asyncio.gather(*(
            stub.CheckAndConsume(
                pb.CheckAndConsumeRequest(seller_id="unsampled", creator_id=f"c{i}",
                                          action=pb.ACTION_MESSAGE),
                metadata=parent if i % 2 else None)
            for i in range(40)))
        await stub.GetStatus(pb.GetStatusRequest(seller_id="unsampled"))
    await server.stop(grace=0)
    assert all(reply.allowed for reply in replies)
    print(len(asked), sorted(set(asked)))

asyncio.run(main())
"""


def test_with_nothing_sampled_no_span_is_even_started(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _UNSAMPLED, database_url],
        env={
            **command_environment(),
            "OTEL_TRACES_SAMPLER": "always_off",
            # Nowhere: nothing is exported, and nothing may be.
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 []"


def test_the_client_works_without_opentelemetry_and_sends_no_trace_then() -> None:
    without = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from quota_authority.client import _client\n"
        "print(_client._trace_injector())"
    )
    done = subprocess.run(
        [sys.executable, "-c", without], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "None"


def test_with_tracing_off_opentelemetry_is_not_imported(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _UNTRACED, database_url],
        env=command_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
