"""A real OTLP/gRPC trace receiver on loopback, as small as one can be: the collector's
trace service (``opentelemetry-proto``), keeping every span it is sent. The traces test
(tests/test_tracing.py) asserts on what it kept; ``make bench``'s tracing scenario exports
to it, counting only; ``python scripts/otlp_sink.py`` serves one and prints each span.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["OtlpSink", "Span", "otlp_sink"]


@dataclass(frozen=True)
class Span:
    """One span as received, ids in hex (as logs and trace viewers show them)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # '' for a root span
    kind: int
    attributes: dict[str, Any]
    # (trace_id, span_id, attributes) of each link.
    links: tuple[tuple[str, str, dict[str, Any]], ...]
    service_name: str
    status_code: int
    start_ns: int


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _span(raw: trace_pb2.Span, service_name: str) -> Span:
    return Span(
        name=raw.name,
        trace_id=raw.trace_id.hex(),
        span_id=raw.span_id.hex(),
        parent_span_id=raw.parent_span_id.hex(),
        kind=raw.kind,
        attributes=_attributes(raw.attributes),
        links=tuple(
            (link.trace_id.hex(), link.span_id.hex(), _attributes(link.attributes))
            for link in raw.links
        ),
        service_name=service_name,
        status_code=raw.status.code,
        start_ns=raw.start_time_unix_nano,
    )


@dataclass
class OtlpSink(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps the spans exported to it (``keep=False``: counts them only)."""

    keep: bool = True
    spans: list[Span] = field(default_factory=list)
    received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        kept: list[Span] = []
        count = 0
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                count += len(scope_spans.spans)
                if self.keep:
                    kept.extend(_span(raw, service) for raw in scope_spans.spans)
        with self._lock:
            self.spans.extend(kept)
            self.received += count
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[Span]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, found: Callable[[list[Span]], bool], within_s: float) -> list[Span]:
        """The spans kept, once ``found(spans)`` holds; ``AssertionError`` after
        ``within_s`` seconds."""
        deadline = time.monotonic() + within_s
        while True:
            spans = self.snapshot()
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the spans sought did not arrive within {within_s} s; "
                    f"{len(spans)} arrived: {sorted({s.name for s in spans})}"
                )
            time.sleep(0.05)


@contextmanager
def otlp_sink(keep: bool = True) -> Iterator[tuple[OtlpSink, str]]:
    """A sink serving on a free loopback port, and its endpoint (``http://127.0.0.1:N``,
    for ``OTEL_EXPORTER_OTLP_ENDPOINT``), until the block ends."""
    sink = OtlpSink(keep=keep)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield sink, f"http://127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def main() -> None:
    with otlp_sink() as (sink, endpoint):
        print(f"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}", flush=True)
        shown = 0
        try:
            while True:
                time.sleep(0.5)
                spans = sink.snapshot()
                for span in spans[shown:]:
                    print(span, flush=True)
                shown = len(spans)
        except KeyboardInterrupt:
            sys.exit(0)


if __name__ == "__main__":
    main()
