#!/usr/bin/env python3
"""A small, real OTLP/gRPC receiver for tests/telemetry.rs and the bench's export run.

Serves the three OTLP collector services (traces, metrics, logs) from the published
`opentelemetry-proto` definitions with grpcio, and appends every request it receives to
OUT as one JSON line: {"signal": "traces"|"metrics"|"logs", "request": <protobuf JSON>}
(json_format: ids come base64, int64 values as strings). Prints `port <N>` on stdout once
serving.

    python3 tests/otlp_receiver.py --port 0 --out /tmp/otlp.jsonl
"""

import argparse
import json
import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.f = open(path, "a", encoding="utf-8")

    def write(self, signal_name, request):
        line = json.dumps({"signal": signal_name, "request": json_format.MessageToDict(request)})
        with self.lock:
            self.f.write(line + "\n")
            self.f.flush()


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        self.sink.write("traces", request)
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        self.sink.write("metrics", request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, sink):
        self.sink = sink

    def Export(self, request, context):
        self.sink.write("logs", request)
        return logs_service_pb2.ExportLogsServiceResponse()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sink = Sink(args.out)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(sink), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(sink), server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(sink), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if port == 0:
        print("cannot bind", file=sys.stderr)
        sys.exit(1)
    server.start()
    print(f"port {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(1)


if __name__ == "__main__":
    main()
