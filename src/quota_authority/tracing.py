"""Traces (OpenTelemetry): off by default, and then free; ``QUOTA_AUTHORITY_TRACING=otlp``
exports them over OTLP/gRPC, configured by the standard ``OTEL_*`` variables (the endpoint,
the sampler and its argument, the service name, the batch processor's delays).

Each call is sampled or not ONCE, as it arrives, before any span exists (``Sampling``,
from ``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG`` as the SDK reads them): a
caller's ``traceparent`` decides for a parent-based sampler (sampled parent, sampled call;
unsampled parent, unsampled call), else the ratio does (a random draw). A call not sampled
makes no span, no link and no statement span: it pays a look at its metadata, a random
number, and one context attached around it (instrumentation suppressed, so that its SQL
statements cost no span either). What is traced, for a call sampled:

* the RPC: a server span (``rpc``) that ``rpc_method`` opens around the call, continuing
  the caller's trace from its metadata (W3C ``traceparent``, or whatever
  ``OTEL_PROPAGATORS`` names), with the semantic conventions' ``rpc.*`` attributes, the
  request's seller (``quota_authority.seller_id``), and for CheckAndConsume its action,
  reason and whether it was allowed (``annotate``). No token, no other field of a request.
  ``opentelemetry-instrumentation-grpc``'s aio interceptor would open the same span, but
  its per-call wrapping cost 70-90 µs of CPU a call (BENCHMARKS.md, Traces).
* its batch transaction (``engine.batching.MicroBatcher``): one span, ``CheckAndConsume
  batch``, the root of a trace of its own, with a link to the span of each SAMPLED call it
  decided (``batch``): one transaction serves many callers, so it is no child of any one of
  them. A batch is traced when at least one call it decided is sampled, and only then:
  every sampled call finds its batch; a batch of unsampled calls makes no span.
* each SQL statement, BEGIN and COMMIT included, of a sampled call or batch: a child span,
  by ``opentelemetry-instrumentation-asyncpg`` (the hot path speaks to asyncpg directly,
  past SQLAlchemy, so SQLAlchemy's instrumentation would miss it). Statements are recorded
  with their placeholders (``$1``), never their parameters. Statements outside any sampled
  call or batch (startup, health probes) make no span.
* each JSON log line written inside a sampled call or batch carries its ``trace_id`` and
  ``span_id``; one written inside an unsampled call whose caller sent a trace carries the
  caller's ``trace_id`` (and no ``span_id``: no span of ours exists); else none.

When off, ``start_tracing`` returns None and nothing here imports OpenTelemetry: the hot
path pays one ``is None`` test per call (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.rpc import code_pb2

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext

    from .domain import Outreach
    from .settings import Settings

__all__ = ["BATCH_SPAN", "SERVICE_NAME", "CallSpan", "Sampling", "Tracing", "start_tracing"]

# The name of the span of a batch transaction of CheckAndConsume calls.
BATCH_SPAN = "CheckAndConsume batch"
# service.name when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one.
SERVICE_NAME = "quota-authority"

# The one Tracing of this process: the tracer provider is process-wide.
_active: list[Tracing] = []

# A W3C traceparent, as opentelemetry's TraceContextTextMapPropagator reads it.
_TRACEPARENT = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$"
)
# The metadata keys of the W3C propagators (tracecontext, baggage), the SDK's default.
_W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})
# The samplers OTEL_TRACES_SAMPLER names (the SDK's): whether a parent decides, and the
# ratio of roots (and of traces, without a parent's say) sampled. The SDK reads an unknown
# name as parentbased_always_on, and warns.
_SAMPLERS = {
    "always_on": (False, 1.0),
    "always_off": (False, 0.0),
    "parentbased_always_on": (True, 1.0),
    "parentbased_always_off": (True, 0.0),
    "traceidratio": (False, None),
    "parentbased_traceidratio": (True, None),
}
_TRACE_ID_LIMIT = (1 << 64) - 1


def start_tracing(settings: Settings) -> Tracing | None:
    """This process's ``Tracing`` as ``settings.tracing`` says: None for ``off``, without
    importing OpenTelemetry; for ``otlp``, started on the first call (the global tracer
    provider, its exporter, the log lines' ids) and the same one after."""
    if settings.tracing == "off":
        return None
    if not _active:
        _active.append(Tracing._start())
    return _active[0]


@dataclass(frozen=True)
class Sampling:
    """Which calls are sampled, decided once as each arrives: ``OTEL_TRACES_SAMPLER`` and
    ``OTEL_TRACES_SAMPLER_ARG`` as the OpenTelemetry SDK reads them (``from_environment``).

    ``parent_based``: a caller's trace decides (sampled parent, sampled call); a call
    without one is sampled with probability ``ratio``. Otherwise the ratio decides every
    call: by the caller's trace id when it sent one (``traceidratio``: the lower 64 bits
    under ``ratio × 2⁶⁴``, as the SDK compares them), else by a random draw."""

    name: str
    parent_based: bool
    ratio: float

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Sampling:
        name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").lower()
        if name not in _SAMPLERS:
            logging.getLogger(__name__).warning(
                "unknown sampler: parentbased_always_on instead", extra={"sampler": name}
            )
            name = "parentbased_always_on"
        parent_based, ratio = _SAMPLERS[name]
        if ratio is None:
            try:
                ratio = float(environ["OTEL_TRACES_SAMPLER_ARG"])
                if not 0.0 <= ratio <= 1.0:
                    raise ValueError(ratio)
            except (KeyError, ValueError):  # as the SDK does: all of them
                logging.getLogger(__name__).warning(
                    "OTEL_TRACES_SAMPLER_ARG is not a ratio from 0 to 1: 1.0 instead",
                    extra={"value": environ.get("OTEL_TRACES_SAMPLER_ARG")},
                )
                ratio = 1.0
        return cls(name, parent_based, ratio)

    @property
    def _bound(self) -> int:
        return round(self.ratio * (_TRACE_ID_LIMIT + 1))

    def child(self, trace_id: int, sampled: bool) -> bool:
        """Whether a call continuing the caller's trace ``trace_id``, which the caller
        ``sampled`` or not, is sampled."""
        if self.parent_based:
            return sampled
        return trace_id & _TRACE_ID_LIMIT < self._bound

    def describe(self) -> str:
        return f"{self.name}, ratio {self.ratio}" if self.name.endswith("ratio") else self.name


class Tracing:
    """Traces turned on: the RPCs' spans, the batches' spans, the statements' spans, the
    attributes of calls. Made by ``start_tracing`` only."""

    def __init__(self, provider: TracerProvider, sampling: Sampling) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY

        self._provider = provider
        self._sampling = sampling
        self._server_kind = trace.SpanKind.SERVER
        self._trace = trace
        self._context = context
        self._attach = context.attach
        self._detach = context.detach
        self._extract = propagate.extract
        self._random = random.random
        # The metadata keys the configured propagators read (traceparent, tracestate,
        # baggage by default): a call that carries none has no trace to continue, and is
        # spared the propagators' work.
        self._carried = frozenset(propagate.get_global_textmap().fields)
        # With the W3C propagators only (the default), a call's traceparent is read here,
        # and the propagators run for sampled calls only; with others (b3, …), they run
        # for every call that carries one of their keys.
        self._w3c = self._carried <= _W3C_FIELDS
        self._traceparent = "traceparent" in self._carried
        self._tracer = trace.get_tracer("quota_authority", tracer_provider=provider)
        self._suppress = _SUPPRESS_INSTRUMENTATION_KEY
        # Where a call or a batch not sampled runs: no span current, no statement traced.
        self._unsampled = context.Context({_SUPPRESS_INSTRUMENTATION_KEY: True})
        # The parent context of every span this service decided to sample
        # (``_DecidedSampler``): no parent span (a batch is the root of a trace of its
        # own), and our decision, which the SDK's sampler follows.
        self._sampled_root = context.Context({_SAMPLED: True})

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
        sampling = Sampling.from_environment()
        provider = TracerProvider(sampler=_DecidedSampler(), resource=resource)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_TraceIds())
        logging.getLogger(__name__).info("tracing on", extra={"sampler": sampling.describe()})
        return cls(provider, sampling)

    def _caller(self, metadata: Any) -> tuple[int, bool, str] | None:
        """The trace the caller sent in ``metadata``: its id, whether the caller sampled
        it, and the id as hex; None when it sent none (or none valid)."""
        if self._w3c:
            if not self._traceparent:
                return None
            for key, value in metadata:
                if key == "traceparent":
                    match = _TRACEPARENT.match(value) if len(value) <= 512 else None
                    if (
                        match is None
                        or match[1] == "ff"
                        or (match[1] == "00" and match[5])
                        or match[2] == "0" * 32
                        or match[3] == "0" * 16
                    ):
                        return None
                    return int(match[2], 16), bool(int(match[4], 16) & 1), match[2]
            return None
        if not any(m[0] in self._carried for m in metadata):
            return None
        extracted = self._extract({m[0]: m[1] for m in metadata})
        span_context = self._trace.get_current_span(extracted).get_span_context()
        if not span_context.is_valid:
            return None
        trace_id = span_context.trace_id
        return trace_id, span_context.trace_flags.sampled, format(trace_id, "032x")

    def rpc(self, service: str, method: str, metadata: Any) -> CallSpan:
        """Decide whether this call of ``service``'s ``method`` is sampled, from the
        caller's trace in ``metadata`` (its invocation metadata) or the ratio. Sampled:
        open its server span, the child of the caller's span, and make it current.
        Not sampled: no span; instrumentation is suppressed until the end, and the
        caller's trace id, when it sent one, is what its log lines carry."""
        caller = self._caller(metadata) if metadata else None
        if caller is None:  # a root: the ratio decides, by a random draw
            sampled = self._random() < self._sampling.ratio
        else:
            sampled = self._sampling.child(caller[0], caller[1])
        if not sampled:
            if caller is None:
                return _Unsampled(self._attach(self._unsampled), self._detach)
            context = self._context.Context({self._suppress: True, _CALLER_TRACE: caller[2]})
            return _Unsampled(self._attach(context), self._detach)
        parent = self._sampled_root
        if any(m[0] in self._carried for m in metadata or ()):
            parent = self._extract({m[0]: m[1] for m in metadata}, parent)
        span = self._tracer.start_span(
            f"{service}/{method}",
            parent,
            self._server_kind,
            {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        token = self._attach(self._trace.set_span_in_context(span, parent))
        return RpcSpan(span, token, self._detach)

    def instrument_statements(self) -> None:
        """Trace each SQL statement sent through asyncpg from now on, as a child of the
        span current then (process-wide), without its parameters: in sampled calls and
        batches only (the others suppress it, ``rpc``, ``batch``)."""
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

    def capture(self) -> SpanContext | None:
        """The span of the call submitting a request to a batch, when it is sampled: what
        the batch links to. None for a call not sampled."""
        span_context = self._trace.get_current_span().get_span_context()
        return span_context if span_context.trace_flags.sampled else None

    def batch(
        self, items: Sequence[Outreach], calls: Sequence[object]
    ) -> AbstractContextManager[object]:
        """The span of one batch transaction deciding ``items``, current while it runs
        (its statements are its children), linked to each sampled call of ``calls``
        (``capture``'s) with the seller and action of the request it submitted. A batch
        of no sampled call makes no span, and its statements none either."""
        if not any(calls):
            return self._run_in(self._unsampled)
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
            if isinstance(call, SpanContext)
        ]
        span = self._tracer.start_span(
            BATCH_SPAN,
            self._sampled_root,
            SpanKind.INTERNAL,
            {
                "quota_authority.batch.size": len(items),
                "quota_authority.batch.sellers": len({item.seller_id for item in items}),
            },
            links,
        )
        return self._in_span(span)

    @contextmanager
    def _run_in(self, context: Context) -> Iterator[None]:
        # The batch's task runs in a copy of the context of whichever call scheduled it
        # (asyncio's call_soon): a batch replaces it, whatever span it held.
        token = self._attach(context)
        try:
            yield
        finally:
            self._detach(token)

    @contextmanager
    def _in_span(self, span: Span) -> Iterator[None]:
        token = self._attach(self._trace.set_span_in_context(span, self._sampled_root))
        try:
            yield
        except BaseException as e:
            from opentelemetry.trace import Status, StatusCode

            span.record_exception(e)
            span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
            raise
        finally:
            self._detach(token)
            span.end()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Export the spans ended so far (at a stop: the process may end next)."""
        self._provider.force_flush(round(timeout_s * 1000))


# The gRPC codes the semantic conventions count as a server's error (the others are the
# caller's: bad input, a refusal).
_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})  # UNKNOWN, DEADLINE_EXCEEDED, …, DATA_LOSS


class CallSpan:
    """What ``Tracing.rpc`` returns for one call: its span if sampled (``recording``),
    current until ``end``."""

    __slots__ = ()

    recording = False

    def set_attributes(self, attributes: Mapping[str, str | bool | int]) -> None:
        """Add ``attributes`` to the call's span, if it has one."""

    def end(self, code: str) -> None:
        """End the call with its gRPC status ``code`` (its name: ``OK``, …)."""
        raise NotImplementedError


class _Unsampled(CallSpan):
    __slots__ = ("_detach", "_token")

    def __init__(self, token: object, detach: Any) -> None:
        self._token = token
        self._detach = detach

    def end(self, code: str) -> None:
        self._detach(self._token)


class RpcSpan(CallSpan):
    """The span of one sampled call, current until ``end``."""

    __slots__ = ("_detach", "_span", "_token")

    recording = True

    def __init__(self, span: Span, token: object, detach: Any) -> None:
        self._span = span
        self._token = token
        self._detach = detach

    def set_attributes(self, attributes: Mapping[str, str | bool | int]) -> None:
        self._span.set_attributes(attributes)

    def end(self, code: str) -> None:
        """End the span with the call's gRPC status ``code`` (its name)."""
        self._detach(self._token)
        span = self._span
        number = code_pb2.Code.Value(code)
        span.set_attribute("rpc.grpc.status_code", number)
        if number in _SERVER_ERRORS:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        span.end()


# The context key of this service's decision to sample (``Tracing.rpc``, ``Tracing.batch``)
# and of the trace id of an unsampled call's caller (``_TraceIds``). Plain strings: keys of
# OpenTelemetry's contexts, made without importing it.
_SAMPLED = "quota_authority.sampled"
_CALLER_TRACE = "quota_authority.caller_trace_id"


def _DecidedSampler() -> Any:
    """The SDK's sampler: it follows the decision ``Tracing`` made once for a call or a
    batch (``_SAMPLED`` in the context a span starts in), and for every other span its
    parent's (a statement's: the sampled call's or batch's). A span with neither, a
    statement outside any call or batch, is dropped."""
    from opentelemetry.context import get_value
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
    from opentelemetry.trace import get_current_span

    class DecidedSampler(Sampler):
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
            parent = get_current_span(parent_context).get_span_context()
            if get_value(_SAMPLED, parent_context) or (
                parent.is_valid and parent.trace_flags.sampled
            ):
                state = parent.trace_state if parent.is_valid else None
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
            return SamplingResult(Decision.DROP)

        def get_description(self) -> str:
            return "DecidedSampler"

    return DecidedSampler()


class _TraceIds(logging.Filter):
    """Adds the current span's ``trace_id`` and ``span_id`` (hex, as traces show them) to
    each log record written inside one, so that a log line leads to its trace; inside an
    unsampled call whose caller sent a trace, that trace's ``trace_id`` alone."""

    def __init__(self) -> None:
        from opentelemetry.context import get_current
        from opentelemetry.trace import get_current_span

        super().__init__()
        self._context = get_current
        self._span = get_current_span

    def filter(self, record: logging.LogRecord) -> bool:
        context = self._context()
        span_context = self._span(context).get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        elif caller := context.get(_CALLER_TRACE):
            record.trace_id = caller
        return True
