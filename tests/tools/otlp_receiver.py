#!/usr/bin/env python3
"""An independent OTLP/gRPC logs and metrics receiver, built from the official
opentelemetry-proto definitions (PyPI: grpcio, opentelemetry-proto). Every log record and every
metric received is appended as one JSON line (protobuf's JSON mapping) to OUT, as
{"resource", "record"} or {"resource", "metric"}. The port it listens on is written to
PORT_FILE.

    otlp_receiver.py PORT_FILE OUT [NAME=VALUE]

With NAME=VALUE, exports without that gRPC header (as collectors requiring a token do) are
refused with UNAUTHENTICATED.
"""
import json
import sys
from concurrent import futures

import grpc
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc


REQUIRED = None


def check_header(context):
    if REQUIRED is None:
        return
    if (REQUIRED[0], REQUIRED[1]) not in [(k, v) for k, v in context.invocation_metadata()]:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing header " + REQUIRED[0])


class Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        check_header(context)
        with open(self.out, "a") as f:
            for resource_logs in request.resource_logs:
                resource = MessageToDict(resource_logs.resource)
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        line = {"resource": resource, "record": MessageToDict(record)}
                        f.write(json.dumps(line) + "\n")
        return logs_service_pb2.ExportLogsServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        check_header(context)
        with open(self.out, "a") as f:
            for resource_metrics in request.resource_metrics:
                resource = MessageToDict(resource_metrics.resource)
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        line = {"resource": resource, "metric": MessageToDict(metric)}
                        f.write(json.dumps(line) + "\n")
        return metrics_service_pb2.ExportMetricsServiceResponse()


def main():
    global REQUIRED
    port_file, out = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        REQUIRED = tuple(sys.argv[3].split("=", 1))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(out), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(out), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with open(port_file, "w") as f:
        f.write(str(port))
    server.wait_for_termination()


if __name__ == "__main__":
    main()
