"""Traces (OpenTelemetry): off by default, and then free; ``QUOTA_AUTHORITY_TRACING=otlp``
exports them over OTLP/gRPC, configured by the standard ``OTEL_*`` variables (the endpoint,
the sampler and its argument, the service name, the batch processor's delays).

What is traced, when on:

* each RPC of the service: a server span (``rpc``) that ``rpc_method`` opens around the
  call, continuing the caller's trace from its metadata (W3C ``traceparent``, or whatever
  ``OTEL_PROPAGATORS`` names), with the semantic conventions' ``rpc.*`` attributes, the
  request's seller (``quota_authority.seller_id``), and for CheckAndConsume its action,
  reason and whether it was allowed (``annotate``). No token, no other field of a request.
  ``opentelemetry-instrumentation-grpc``'s aio interceptor would open the same span, but
  its per-call wrapping cost 70-90 µs of CPU a call (BENCHMARKS.md, Traces): more than a
  third of a call's, sampled or not; this span costs a few µs when not sampled.
* each batch transaction of CheckAndConsume calls (``engine.batching.MicroBatcher``): one
  span, ``CheckAndConsume batch``, the root of a trace of its own, with a link to the
  span of each call it decided (``batch``): one transaction serves many callers, so it is
  no child of any one of them. A batch is sampled when any call it decided was, or else as
  the sampler decides a root (``_FollowSampledLinks``), so every sampled call finds its
  batch.
* each SQL statement, BEGIN and COMMIT included: a child span of the batch or call it ran
  for, by ``opentelemetry-instrumentation-asyncpg`` (the hot path speaks to asyncpg
  directly, past SQLAlchemy, so SQLAlchemy's instrumentation would miss it). Statements
  are recorded with their placeholders (``$1``), never their parameters.
* each JSON log line written inside a span carries its ``trace_id`` and ``span_id``.

When off, ``start_tracing`` returns None and nothing here imports OpenTelemetry: the hot
path pays one ``is None`` test per call (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext

    from .domain import Outreach
    from .settings import Settings

__all__ = ["BATCH_SPAN", "SERVICE_NAME", "RpcSpan", "Tracing", "start_tracing"]

# The name of the span of a batch transaction of CheckAndConsume calls.
BATCH_SPAN = "CheckAndConsume batch"
# service.name when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one.
SERVICE_NAME = "quota-authority"

# The one Tracing of this process: the tracer provider is process-wide.
_active: list[Tracing] = []


def start_tracing(settings: Settings) -> Tracing | None:
    """This process's ``Tracing`` as ``settings.tracing`` says: None for ``off``, without
    importing OpenTelemetry; for ``otlp``, started on the first call (the global tracer
    provider, its exporter, the log lines' ids) and the same one after."""
    if settings.tracing == "off":
        return None
    if not _active:
        _active.append(Tracing._start())
    return _active[0]


class Tracing:
    """Traces turned on: the RPCs' spans, the batches' spans, the statements' spans, the
    attributes of calls. Made by ``start_tracing`` only."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, propagate, trace

        self._provider = provider
        self._server_kind = trace.SpanKind.SERVER
        self._trace = trace
        self._context = context
        self._extract = propagate.extract
        # The metadata keys the configured propagators read (traceparent, tracestate,
        # baggage by default): a call that carries none has no trace to continue, and is
        # spared the propagators' work.
        self._carried = frozenset(propagate.get_global_textmap().fields)
        self._tracer = trace.get_tracer("quota_authority", tracer_provider=provider)
        # No parent: a batch serves many calls, and is the root of a trace of its own.
        self._no_parent = context.Context()

    @classmethod
    def _start(cls) -> Tracing:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        # The sampler OTEL_TRACES_SAMPLER(_ARG) configures, as the SDK reads it.
        configured = TracerProvider(shutdown_on_exit=False).sampler
        provider = TracerProvider(sampler=_FollowSampledLinks(configured), resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_TraceIds(trace))
        logging.getLogger(__name__).info(
            "tracing on", extra={"sampler": provider.sampler.get_description()}
        )
        return cls(provider)

    def rpc(self, service: str, method: str, metadata: Any) -> RpcSpan:
        """Open the server span of one call of ``service``'s ``method``, the child of the
        caller's span that ``metadata`` (the call's invocation metadata) carries, and make it
        current; ``RpcSpan.end`` ends it. Attributes are set only on a span sampled."""
        carried = self._carried
        parent = None
        if metadata and any(m[0] in carried for m in metadata):
            parent = self._extract({m[0]: m[1] for m in metadata})
        span = self._tracer.start_span(f"{service}/{method}", parent, self._server_kind)
        if span.is_recording():
            span.set_attributes(
                {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
            )
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return RpcSpan(span, token, self._context.detach)

    def instrument_statements(self) -> None:
        """Trace each SQL statement sent through asyncpg from now on, as a child of the
        span current then (process-wide), without its parameters."""
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=self._provider)

    def untraced(self) -> AbstractContextManager[object]:
        """Run what is inside without spans: the health probes, every couple of seconds,
        would otherwise fill the traces with their statements."""
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        return suppress_instrumentation()

    def recording(self) -> bool:
        """Whether the current span is sampled: only then are attributes worth making."""
        return bool(self._trace.get_current_span().is_recording())

    def annotate(self, attributes: Mapping[str, str | bool | int]) -> None:
        """Add ``attributes`` to the span of the call being served, when it is recorded."""
        span = self._trace.get_current_span()
        if span.is_recording():
            span.set_attributes(attributes)

    # The engine's batch tracer (engine.ports.BatchTracer) -----------------------------

    def capture(self) -> SpanContext:
        """The span of the call submitting a request to a batch: what the batch links to."""
        return self._trace.get_current_span().get_span_context()

    def batch(
        self, items: Sequence[Outreach], calls: Sequence[object]
    ) -> AbstractContextManager[object]:
        """The span of one batch transaction deciding ``items``, current while it runs
        (its statements are its children), linked to each of ``calls`` (``capture``'s)
        with the seller and action of the request it submitted."""
        from opentelemetry.trace import Link, SpanContext, SpanKind

        links = [
            Link(
                call,
                {
                    "quota_authority.seller_id": item.seller_id,
                    "quota_authority.action": item.action.value,
                },
            )
            for item, call in zip(items, calls, strict=True)
            if isinstance(call, SpanContext) and call.is_valid
        ]
        return self._tracer.start_as_current_span(
            BATCH_SPAN,
            context=self._no_parent,
            kind=SpanKind.INTERNAL,
            links=links,
            attributes={
                "quota_authority.batch.size": len(items),
                "quota_authority.batch.sellers": len({item.seller_id for item in items}),
            },
        )

    def flush(self, timeout_s: float = 5.0) -> None:
        """Export the spans ended so far (at a stop: the process may end next)."""
        self._provider.force_flush(round(timeout_s * 1000))


# The gRPC codes the semantic conventions count as a server's error (the others are the
# caller's: bad input, a refusal).
_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})  # UNKNOWN, DEADLINE_EXCEEDED, …, DATA_LOSS


class RpcSpan:
    """The span of one call, current until ``end``."""

    __slots__ = ("_detach", "_span", "_token")

    def __init__(self, span: Span, token: object, detach: Any) -> None:
        self._span = span
        self._token = token
        self._detach = detach

    def end(self, code: int) -> None:
        """End the span with the call's gRPC status ``code`` (a number)."""
        self._detach(self._token)
        span = self._span
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code)
            if code in _SERVER_ERRORS:
                from opentelemetry.trace import Status, StatusCode

                span.set_status(Status(StatusCode.ERROR))
        span.end()


def _FollowSampledLinks(configured: Any) -> Any:
    """``configured`` (the sampler the ``OTEL_TRACES_SAMPLER`` variables make), except that
    a span without a parent that links to a sampled span is sampled: a batch transaction
    is kept whenever one of the calls it decided is."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import get_current_span

    class FollowSampledLinks(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: Any = None,
            attributes: Any = None,
            links: Any = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if (
                links
                and not get_current_span(parent_context).get_span_context().is_valid
                and any(link.context.trace_flags.sampled for link in links)
            ):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            result: SamplingResult = configured.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
            return result

        def get_description(self) -> str:
            return f"FollowSampledLinks{{{configured.get_description()}}}"

    return FollowSampledLinks()


class _TraceIds(logging.Filter):
    """Adds the current span's ``trace_id`` and ``span_id`` (hex, as traces show them) to
    each log record written inside one, so that a log line leads to its trace."""

    def __init__(self, trace: Any) -> None:
        super().__init__()
        self._current = trace.get_current_span

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = self._current().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        return True
