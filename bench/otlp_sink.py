"""An OTLP/gRPC collector that takes every batch of spans and keeps none:
what the traced catalog of `make bench` exports to. The first stdout line
is `otlp-sink listening grpc=<addr>`; SIGTERM stops it, after printing how
many spans it took."""

import asyncio
import signal
import socket

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = 0

    async def Export(self, request, context):
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = grpc.aio.server()
    sink = Sink()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"otlp-sink listening grpc=127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    print(f"otlp-sink took {sink.spans} spans", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
