"""A real OTLP receiver for leakwatch's tests: oteltest's GrpcSink or HttpSink, writing what
arrives as JSON lines. Usage: otlp_receiver.py grpc|http PORT OUTPUT [SECONDS]

The sinks listen on every interface (they cannot be pinned to loopback); the tests only ever
send to 127.0.0.1. The receiver stops by itself after SECONDS (default 120)."""

import json
import logging
import sys
import threading

from oteltest.sink import GrpcSink, HttpSink
from oteltest.sink.handler import RequestHandler


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(key_values):
    return {kv.key: value(kv.value) for kv in key_values}


class JsonLines(RequestHandler):
    def __init__(self, path):
        self.out = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, record):
        with self.lock:
            self.out.write(json.dumps(record) + "\n")

    def handle_trace(self, request, headers):
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.write({
                        "signal": "span",
                        "name": span.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "status_code": span.status.code,
                        "attributes": attributes(span.attributes),
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                    })

    def handle_metrics(self, request, headers):
        for resource_metrics in request.resource_metrics:
            resource = attributes(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    self.write({
                        "signal": "metric",
                        "name": metric.name,
                        "unit": metric.unit,
                        "resource": resource,
                    })

    def handle_logs(self, request, headers):
        pass


def main():
    mode, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 120.0
    logger = logging.getLogger("otlp_receiver")
    handler = JsonLines(path)
    sink = GrpcSink(handler, logger, port=port) if mode == "grpc" else HttpSink(handler, logger, port=port, daemon=True)
    sink.start()
    print("ready", flush=True)
    threading.Event().wait(seconds)
    sink.stop()


if __name__ == "__main__":
    main()
