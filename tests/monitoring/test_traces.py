"""Traces from real processes into an OTLP collector inside the test (a gRPC
TraceService of the opentelemetry-proto package): one call that crosses
services arrives as one trace with the right parents and codes; a catalog
change consumed by offers and shopping is linked to the write's trace; and a
collector that is down or stalled costs the calls nothing but dropped,
counted spans."""

import json
import re
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from agora_local import Credentials, Nats, Running, free_port, generated_client

BOUND_SECONDS = 30
# The caller's own span: the trace starts in the test, sampled.
TRACE_ID = uuid.uuid4().hex
CALLER_SPAN = uuid.uuid4().hex[:16]
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
SERVER, CLIENT, CONSUMER = 2, 3, 5  # OTLP's SpanKind


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent, with the service that sent it."""

    def __init__(self):
        self.spans, self.lock = [], threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    self.spans += [(service, span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list:
        with self.lock:
            return [(s, span) for s, span in self.spans if span.trace_id.hex() == trace_id]

    def wait(self, what: str, condition):
        deadline = time.monotonic() + BOUND_SECONDS
        while not (found := condition()):
            assert time.monotonic() < deadline, f"not within {BOUND_SECONDS} s: {what}"
            time.sleep(0.1)
        return found


def attribute(span, key: str):
    for a in span.attributes:
        if a.key == key:
            value = a.value
            return value.string_value or value.int_value
    return None


def traced_env(endpoint: str) -> dict:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "50"}


def timestamp(seconds_from_now: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(time.time()) + seconds_from_now)


def serve_collector() -> tuple:
    """A collector on a free loopback port: (it, its server, the port)."""
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return collector, server, port


def linked_consumer(collector: Collector, service: str, write_trace: str) -> bool:
    """Whether `service` applied an event in a consumer span linked to the write's trace."""
    with collector.lock:
        return any(s == service and span.kind == CONSUMER and any(link.trace_id.hex() == write_trace
                                                                  for link in span.links)
                   for s, span in collector.spans)


def test_a_feed_event_on_jetstream_links_to_its_write():
    """The trace context travels in the JetStream message's headers: the consumer's span links to the
    write's as it does through a Watch stream."""
    collector, server, port = serve_collector()
    pb = generated_client()
    catalog_pb2, catalog_grpc = pb["catalog"]
    try:
        data = Path(tempfile.mkdtemp(prefix="agora-traces-jetstream-"))
        nats = Nats(Credentials(data), data).start()
        try:
            with Running(data, traced_env(f"http://127.0.0.1:{port}"), nats=nats) as run:
                system = run.system
                with system.channel("catalog", system.token("staff")) as c:
                    catalog = catalog_grpc.CatalogServiceStub(c)
                    family = catalog.CreateFamily(catalog_pb2.CreateFamilyRequest(
                        family=catalog_pb2.Family(display_name="Lamps")), timeout=5).family
                    write_trace = uuid.uuid4().hex
                    catalog.CreateProduct(catalog_pb2.CreateProductRequest(
                        request_id=str(uuid.uuid4()),
                        product=catalog_pb2.Product(display_name="Desk lamp", family_id=family.family_id,
                                                    price=pb["money"].Money(currency_code="EUR", amount_minor=3990))),
                        timeout=5, metadata=[("traceparent", f"00-{write_trace}-{CALLER_SPAN}-01")])
                for consumer in ("agora-offers", "agora-shopping"):
                    collector.wait(f"{consumer} applies the event from JetStream, linked to the write",
                                   lambda: linked_consumer(collector, consumer, write_trace))
        finally:
            nats.kill()
    finally:
        server.stop(0)


def test_a_call_across_services_is_one_trace_and_a_feed_event_links_to_its_write():
    collector, server, port = serve_collector()
    pb = generated_client()
    catalog_pb2, catalog_grpc = pb["catalog"]
    offers_pb2, offers_grpc = pb["offers"]
    try:
        data = Path(tempfile.mkdtemp(prefix="agora-traces-"))
        env = {**traced_env(f"http://127.0.0.1:{port}"), "AGORA_LOG_FORMAT": "json", "AGORA_LOG": "info,agora_platform=debug"}
        with Running(data, env, logs=data) as run:
            system = run.system
            staff = system.token("staff")
            with system.channel("catalog", staff) as c:
                catalog = catalog_grpc.CatalogServiceStub(c)
                family = catalog.CreateFamily(catalog_pb2.CreateFamilyRequest(
                    family=catalog_pb2.Family(display_name="Lamps")), timeout=5).family
                # The write whose event offers and shopping consume, traced.
                write_trace = uuid.uuid4().hex
                product = catalog.CreateProduct(catalog_pb2.CreateProductRequest(
                    request_id=str(uuid.uuid4()),
                    product=catalog_pb2.Product(display_name="Desk lamp", family_id=family.family_id,
                                                price=pb["money"].Money(currency_code="EUR", amount_minor=3990))),
                    timeout=5, metadata=[("traceparent", f"00-{write_trace}-{CALLER_SPAN}-01")]).product
            # Offers has the product from the catalog's feed (the consumer's
            # span linked to the write's): it will not ask the catalog.
            collector.wait("offers applies the catalog's event",
                           lambda: linked_consumer(collector, "agora-offers", write_trace))
            # One call that crosses services: a personal offer for a customer
            # offers has not heard of asks customers (offers keeps the
            # customers and products the feeds bring, so one that customers
            # registered is not asked about: this one was never registered,
            # and the answer is NOT_FOUND). Then the same call from a caller
            # that decided not to sample: parent-based sampling keeps that.
            unsampled = uuid.uuid4().hex
            stranger = f"cus_{uuid.uuid4().hex}"
            with system.channel("offers", staff) as o:
                for traceparent in (TRACEPARENT, f"00-{unsampled}-{CALLER_SPAN}-00"):
                    try:
                        offers_grpc.OfferServiceStub(o).CreateOffer(offers_pb2.CreateOfferRequest(
                            offer=offers_pb2.Offer(product_id=product.product_id, customer_id=stranger,
                                                   kind=offers_pb2.OFFER_KIND_SPEED, discount_percent=15,
                                                   start_time=timestamp(-60), end_time=timestamp(3600))),
                            timeout=5, metadata=[("traceparent", traceparent)])
                        raise AssertionError("an offer for a customer nobody registered was made")
                    except grpc.RpcError as err:
                        assert err.code() == grpc.StatusCode.NOT_FOUND, err

            def complete():
                spans = collector.of_trace(TRACE_ID)
                servers = {(s, span.name) for s, span in spans if span.kind == SERVER}
                # Each process sends its spans in the order they ended: once a
                # server span is in, the spans under it are too.
                return spans if {("agora-customers", "agora.customers.v1.CustomerService/GetCustomer"),
                                 ("agora-offers", "agora.offers.v1.OfferService/CreateOffer")} <= servers else None

            spans = collector.wait("the trace of CreateOffer reaches the collector", complete)
            by_id = {span.span_id: (service, span) for service, span in spans}
            [(_, root)] = [(s, span) for s, span in spans
                           if span.kind == SERVER and span.name == "agora.offers.v1.OfferService/CreateOffer"]
            # The caller's decision and span are honoured: its span is the root's parent.
            assert root.parent_span_id.hex() == CALLER_SPAN
            assert attribute(root, "rpc.system") == "grpc"
            assert attribute(root, "rpc.service") == "agora.offers.v1.OfferService"
            assert attribute(root, "rpc.method") == "CreateOffer"
            # NOT_FOUND is the caller's mistake, not an error of the server's.
            assert attribute(root, "rpc.grpc.status_code") == 5 and root.status.code != 2
            assert not any(s == "agora-catalog" for s, _ in spans), "offers asked the catalog for a product it knew"
            for upstream, method in [("customers", "agora.customers.v1.CustomerService/GetCustomer")]:
                [(_, answered)] = [(s, span) for s, span in spans
                                   if s == f"agora-{upstream}" and span.kind == SERVER and span.name == method]
                # The upstream's server span is the child of offers' attempt,
                # which is the child of offers' server span.
                service, attempt = by_id[answered.parent_span_id]
                assert (service, attempt.kind, attempt.name) == ("agora-offers", CLIENT, method)
                assert attribute(attempt, "agora.attempt") == 1
                assert attribute(attempt, "server.address") == upstream
                assert attempt.parent_span_id == root.span_id
                assert answered.status.code != 2, "NOT_FOUND is no error of the server's"
            # Every log line written inside the call names its trace and span.
            lines = [json.loads(line) for line in (data / "offers.log").read_text().splitlines()
                     if line.startswith("{")]
            inside = [line for line in lines if line.get("span", {}).get("rpc.method") == "CreateOffer"]
            assert inside, "offers logged nothing inside CreateOffer"
            assert all(line["span"]["trace_id"] in (TRACE_ID, unsampled) for line in inside), inside
            assert all(line["span"]["span_id"] == root.span_id.hex()
                       for line in inside if line["span"]["trace_id"] == TRACE_ID), inside
            # The database's spans: the statement's shape, never its values.
            statements = [span for s, span in spans if s == "agora-offers" and attribute(span, "db.query.text")]
            assert statements and all("$1" in attribute(span, "db.query.text") or "VALUES" not in
                                       attribute(span, "db.query.text") for span in statements)
            assert not any(stranger in str(attribute(span, "db.query.text")) for span in statements)

            # The catalog's event, consumed by offers and shopping, each in a
            # span of its own linked to the write's span.
            def consumed():
                found = {}
                with collector.lock:
                    for service, span in collector.spans:
                        for link in span.links:
                            if link.trace_id.hex() == write_trace and span.kind == CONSUMER:
                                found[service] = (span, link)
                written = any(span.kind == SERVER for _, span in collector.of_trace(write_trace))
                return found if written and {"agora-offers", "agora-shopping"} <= set(found) else None

            links = collector.wait("offers and shopping link the event to the write", consumed)
            [(_, write)] = [(s, span) for s, span in collector.of_trace(write_trace)
                            if span.kind == SERVER and span.name == "agora.catalog.v1.CatalogService/CreateProduct"]
            for service, (span, link) in links.items():
                assert link.span_id == write.span_id, service
                assert span.name == "catalog process"
                assert span.trace_id.hex() != write_trace, "a consumer's span starts a trace of its own"
            # Long after the unsampled call, none of its spans arrived.
            assert collector.of_trace(unsampled) == []
    finally:
        server.stop(0)


def call_latencies(run: Running, calls: int) -> list:
    pb = generated_client()
    catalog_pb2, catalog_grpc = pb["catalog"]
    staff = run.system.token("staff")
    latencies = []
    with run.system.channel("catalog", staff) as channel:
        catalog = catalog_grpc.CatalogServiceStub(channel)
        for _ in range(calls):
            started = time.perf_counter()
            catalog.ListFamilies(catalog_pb2.ListFamiliesRequest(), timeout=5)
            latencies.append(time.perf_counter() - started)
    return latencies


def metric(admin: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_stalled_or_missing_collector_costs_the_calls_nothing():
    # Stalled: accepts connections and never answers.
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(64)
    endpoints = {"stalled": f"http://127.0.0.1:{stalled.getsockname()[1]}",
                 "down": f"http://127.0.0.1:{free_port()}"}
    try:
        with Running(Path(tempfile.mkdtemp(prefix="agora-untraced-"))) as run:
            call_latencies(run, 50)  # warm up
            untraced = statistics.median(call_latencies(run, 300))
        for why, endpoint in endpoints.items():
            env = {**traced_env(endpoint), "OTEL_BSP_MAX_QUEUE_SIZE": "64", "OTEL_BSP_EXPORT_TIMEOUT": "200"}
            with Running(Path(tempfile.mkdtemp(prefix=f"agora-{why}-")), env) as run:
                call_latencies(run, 50)
                traced = statistics.median(call_latencies(run, 300))
                # Every call answered (call_latencies raises otherwise), no
                # slower than a bound, and the spans that could not go counted.
                assert traced < untraced * 2 + 0.002, f"{why}: {traced * 1e3:.2f} ms against {untraced * 1e3:.2f} ms"
                admin = run.system.admins["catalog"]
                deadline = time.monotonic() + BOUND_SECONDS
                while metric(admin, "agora_trace_spans_dropped_total") == 0:
                    assert time.monotonic() < deadline, f"{why}: no span counted as dropped"
                    time.sleep(0.1)
                assert metric(admin, "agora_trace_spans_exported_total") == 0
    finally:
        stalled.close()
