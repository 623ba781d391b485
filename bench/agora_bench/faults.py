"""Faults: what a caller gets while the database is down, and what a well-behaved client gets while
thousands of connections that never call are held open.

- database down: offers on PostgreSQL through a fault proxy (target/dist/agora-fault-proxy) that
  resets and refuses its connections. Once offers' health says NOT_SERVING, a client on one channel
  calls ListAvailableOffers (answered from the fallback set) and ListOffers (UNAVAILABLE) with
  deadlines of 200 ms, 1 s and 2 s: the median and p99 time to the answer, and what the answers were.
  Then the database comes back: how long until health says SERVING, and until offers follows the
  catalog's feed again (a product created while offers' database was down reaches its projection).
- silent connections: the catalog with TLS and token checks, and 5,000 connections from 20 other
  loopback addresses that never call, a third each silent TCP, a TLS handshake and nothing more, and
  TLS with the HTTP/2 preface only; the flood reconnects whatever the server closes, so 5,000 stay
  open on its side all along. GetProduct's rate from h2load (connections opened during the flood)
  against its rate just before, and the share of calls answered OK, counting every h2load call and
  a client that opens a new connection for each of its calls.
"""

import selectors
import socket
import ssl
import statistics
import subprocess
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .data import POSTGRES_URL, product_id, psql
from .runner import (BOUND, QUICK, RELEASE, RUN_SECONDS, SMALL, Bench, fmt_ms, frame, handled_by_code, log, metric,
                     start_service)

GET_PATH = "/agora.catalog.v1.CatalogService/GetProduct"
MIDDLE = product_id(SMALL // 2)
DEADLINES = (0.2, 1.0, 2.0)
CALLS_PER_DEADLINE = 20 if QUICK else 60
SILENT = 1_000 if QUICK else 5_000
SOURCES = [f"127.0.1.{i}" for i in range(1, 21)]
FRESH_CALLS = 50 if QUICK else 200
SECONDS = max(1, round(RUN_SECONDS))  # h2load -D takes whole seconds
FALLBACK = '[{"offer_id": "fallback-1", "product_id": "prd_fallback", "kind": "SPEED", "discount_percent": 5}]'
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def wait_for(condition, bound: float = BOUND, pause: float = 0.005) -> float | None:
    """Polls `condition` until it holds: the seconds that took, or None after `bound`."""
    started = time.monotonic()
    while time.monotonic() - started < bound:
        if condition():
            return time.monotonic() - started
        time.sleep(pause)
    return None


def serving(admin: str) -> bool:
    with grpc.insecure_channel(admin) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


class FaultProxy:
    """agora-fault-proxy in front of PostgreSQL; `set` switches its fault."""

    def __init__(self, bench: Bench, target: str):
        self.process = subprocess.Popen([str(RELEASE / "agora-fault-proxy"), "--listen", "127.0.0.1:0",
                                         "--target", target], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        bench.procs.running.append(self.process)
        self.addr = self.process.stdout.readline().split()[1]

    def set(self, fault: str) -> None:
        self.process.stdin.write(fault + "\n")
        self.process.stdin.flush()
        self.process.stdout.readline()

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)


def timed(fn, timeout: float) -> tuple[float, str, object]:
    """One call: milliseconds to its answer, the code's name, the answer (None on an error)."""
    started = time.perf_counter()
    try:
        answer = fn(timeout)
        code = "OK"
    except grpc.RpcError as err:
        answer, code = None, err.code().name
    return (time.perf_counter() - started) * 1000, code, answer


def summary(samples: list) -> dict:
    ms = sorted(s[0] for s in samples)
    codes: dict = {}
    for _, code, _ in samples:
        codes[code] = codes.get(code, 0) + 1
    return {"p50": statistics.median(ms), "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "codes": codes,
            "count": len(ms)}


def database_down(bench: Bench, data, created: list) -> None:
    if data.pg_url is None:
        bench.results["db_down"] = {"skipped": data.pg_skip}
        return
    off, cat = bench.client.offers, bench.client.catalog
    base, _, query = data.pg_url.partition("?")
    db = base.rsplit("/", 1)[1] + "_faults"
    created.append(db)
    psql(POSTGRES_URL, f"CREATE DATABASE {db}")
    server = base.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    proxy = FaultProxy(bench, server)
    url = base.rsplit("/", 1)[0].replace(server, proxy.addr) + "/" + db + (f"?{query}" if query else "")
    direct = base.rsplit("/", 1)[0] + "/" + db + (f"?{query}" if query else "")
    catalog = start_service(bench.procs, "catalog-faults", "catalog", f"sqlite:{bench.work / 'catalog-faults.db'}",
                            AGORA_OUTBOX_POLL_MS=100).wait_serving()
    offers = start_service(bench.procs, "offers-faults", "offers", url, AGORA_OFFERS_FALLBACK=FALLBACK,
                           AGORA_CATALOG_ADDRS=f"http://{catalog.grpc}", AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9",
                           AGORA_LOG="error").wait_serving()
    result: dict = {"deadlines": {}}
    try:
        with grpc.insecure_channel(catalog.grpc) as cch, grpc.insecure_channel(offers.grpc) as och:
            catalog_stub = cch.unary_unary("/agora.catalog.v1.CatalogService/CreateFamily",
                                           request_serializer=cat.CreateFamilyRequest.SerializeToString,
                                           response_deserializer=cat.CreateFamilyResponse.FromString)
            family = catalog_stub(cat.CreateFamilyRequest(family=cat.Family(display_name="Lamps")), timeout=5).family
            create = cch.unary_unary("/agora.catalog.v1.CatalogService/CreateProduct",
                                     request_serializer=cat.CreateProductRequest.SerializeToString,
                                     response_deserializer=cat.CreateProductResponse.FromString)
            money = bench.client.money

            def new_product() -> str:
                product = cat.Product(display_name="Lamp", family_id=family.family_id,
                                      price=money.Money(currency_code="EUR", amount_minor=990))
                return create(cat.CreateProductRequest(product=product), timeout=5).product.product_id

            def known(product_id: str) -> bool:
                return psql(direct, f"SELECT count(*) FROM catalog_products WHERE product_id = '{product_id}'") == "1"

            first = new_product()
            if wait_for(lambda: known(first), pause=0.05) is None:
                bench.failures.append("database down: offers never followed the catalog's feed")
            available = och.unary_unary("/agora.offers.v1.OfferService/ListAvailableOffers",
                                        request_serializer=off.ListAvailableOffersRequest.SerializeToString,
                                        response_deserializer=off.ListAvailableOffersResponse.FromString)
            listing = och.unary_unary("/agora.offers.v1.OfferService/ListOffers",
                                      request_serializer=off.ListOffersRequest.SerializeToString,
                                      response_deserializer=off.ListOffersResponse.FromString)
            log("database down: offers' PostgreSQL refused and reset")
            proxy.set("refuse")
            result["not_serving_after"] = wait_for(lambda: not serving(offers.admin))
            during = new_product()
            for deadline in DEADLINES:
                avail = [timed(lambda t: available(off.ListAvailableOffersRequest(), timeout=t), deadline)
                         for _ in range(CALLS_PER_DEADLINE)]
                lists = [timed(lambda t: listing(off.ListOffersRequest(), timeout=t), deadline)
                         for _ in range(CALLS_PER_DEADLINE)]
                a = summary(avail)
                a["fallback"] = sum(1 for _, code, ans in avail if code == "OK" and ans.fallback)
                result["deadlines"][deadline] = {"available": a, "list": summary(lists)}
            proxy.set("none")
            back = time.monotonic()
            result["serving_after"] = wait_for(lambda: serving(offers.admin))
            followed = wait_for(lambda: known(during), pause=0.01)
            result["feed_after"] = None if followed is None else time.monotonic() - back
    finally:
        offers.stop()
        catalog.stop()
        proxy.stop()
    bench.results["db_down"] = result


class Flood:
    """Connections that never call, `count` of them from SOURCES, a third each: silent TCP, a TLS
    handshake and nothing more, TLS and the HTTP/2 preface. A thread reopens what the server closes."""

    def __init__(self, addr: str, count: int):
        host, port = addr.rsplit(":", 1)
        self.target = (host, int(port))
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE
        self.tls.set_alpn_protocols(["h2"])
        self.selector = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.opened = self.reopened = self.failed = 0
        for i in range(count):
            self.open(i)
        self.thread = threading.Thread(target=self.keep, daemon=True)
        self.thread.start()

    def open(self, i: int) -> None:
        try:
            sock = socket.create_connection(self.target, timeout=5, source_address=(SOURCES[i % len(SOURCES)], 0))
            if i % 3:
                sock = self.tls.wrap_socket(sock, server_hostname="catalog")
                if i % 3 == 2:
                    sock.sendall(PREFACE)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, i)
            self.opened += 1
        except OSError:
            self.failed += 1

    def keep(self) -> None:
        """Reopens each connection the server closed (readable, then empty or failing)."""
        while not self.stop.is_set():
            for key, _ in self.selector.select(timeout=0.2):
                sock, i = key.fileobj, key.data
                try:
                    if sock.recv(4096):
                        continue
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    pass
                self.selector.unregister(sock)
                sock.close()
                if not self.stop.is_set():
                    self.open(i)
                    self.reopened += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()


def silent_connections(bench: Bench, data) -> None:
    cat = bench.client.catalog
    catalog = start_service(bench.procs, "catalog-flood", "catalog", f"sqlite:{data.small_db}",
                            **bench.dev.env("catalog")).wait_serving()
    token = bench.dev.token("customer", "cus_bench")
    body = frame(cat.GetProductRequest(product_id=MIDDLE))
    try:
        cpu = catalog.cpu_seconds()
        before = bench.h2.run(catalog.grpc, GET_PATH, body, duration=SECONDS, tls=True, token=token)
        cpu_before = catalog.cpu_seconds() - cpu
        log(f"silent connections: {SILENT:,} from {len(SOURCES)} addresses")
        flood = Flood(catalog.grpc, SILENT)
        try:
            held = metric(catalog.metrics(), "agora_grpc_server_connections")
            snapshot, cpu = catalog.metrics(), catalog.cpu_seconds()
            during = bench.h2.run(catalog.grpc, GET_PATH, body, duration=SECONDS, tls=True, token=token)
            cpu_during = catalog.cpu_seconds() - cpu
            codes = handled_by_code(snapshot, catalog.metrics(), GET_PATH)
            fresh_ok = 0
            for _ in range(FRESH_CALLS):
                with bench.dev.channel(catalog.grpc, token) as channel:
                    rpc = channel.unary_unary(GET_PATH, request_serializer=cat.GetProductRequest.SerializeToString,
                                              response_deserializer=cat.GetProductResponse.FromString)
                    try:
                        rpc(cat.GetProductRequest(product_id=MIDDLE), timeout=5)
                        fresh_ok += 1
                    except grpc.RpcError:
                        pass
            closed = {reason: metric(catalog.metrics(), "agora_grpc_server_connections_closed_total", reason=reason)
                      for reason in ("evicted", "limit", "peer_limit", "handshake")}
        finally:
            flood.close()
    finally:
        catalog.stop()
    # h2load's calls that did not end in an answer, and the answers that were not OK.
    h2_bad = during["failed"] + sum(n for code, n in codes.items() if code != "OK")
    bench.results["abuse_silent"] = {
        "count": SILENT, "held": held, "opened": flood.opened, "reopened": flood.reopened, "failed": flood.failed,
        "rate_before": before["rps"], "rate_during": during["rps"], "h2_calls": during["done"] + during["failed"],
        "h2_bad": h2_bad, "fresh_ok": fresh_ok, "fresh": FRESH_CALLS, "closed": closed,
        # The server's CPU a call, before and during (the flood's handshakes and closes included).
        "cpu_us_before": cpu_before * 1e6 / max(1, before["done"]),
        "cpu_us_during": cpu_during * 1e6 / max(1, during["done"]),
    }


def faults(bench: Bench, data, created: list) -> None:
    database_down(bench, data, created)
    silent_connections(bench, data)


def rows(rows_) -> None:
    """The fault rows of the table."""
    from .report import goal, num
    r = rows_.r
    d = r.get("db_down", {})
    if "skipped" in d:
        rows_.add("faults: offers while its database is down", f"skipped: {d['skipped']}", "–")
    elif d:
        for deadline, x in d["deadlines"].items():
            a, li = x["available"], x["list"]
            fast = a["p50"] <= 50 and li["p50"] <= 50
            rows_.add(f"faults: offers' database down, callers with a {deadline * 1000:.0f} ms deadline",
                      f"ListAvailableOffers: {a['fallback']}/{a['count']} from the fallback; "
                      f"ListOffers: {li['codes']}",
                      f"NOT_SERVING {fmt_s(d['not_serving_after'])} after the outage began; SERVING again "
                      f"{fmt_s(d['serving_after'])}, the feed followed {fmt_s(d['feed_after'])} after its end",
                      f"{fmt_ms(a['p50'])} / {fmt_ms(li['p50'])}", f"{fmt_ms(a['p99'])} / {fmt_ms(li['p99'])}",
                      goals=f"UNAVAILABLE or the fallback within 50 ms at the median: "
                            f"{goal(fast and a['fallback'] == a['count'] and set(li['codes']) == {'UNAVAILABLE'})}")
    s = r.get("abuse_silent")
    if s:
        calls = s["h2_calls"] + s["fresh"]
        share = 1 - (s["h2_bad"] + s["fresh"] - s["fresh_ok"]) / calls if calls else 0
        ratio = s["rate_during"] / s["rate_before"] if s["rate_before"] else 0
        rows_.add(f"abuse: {s['count']:,} connections that never call (silent TCP, TLS only, preface only), "
                  f"TLS and a token",
                  f"GetProduct {num(s['rate_during'])} req/s during; {share:.4f} of {calls:,} calls OK "
                  f"({s['fresh_ok']}/{s['fresh']} on a new connection each)",
                  f"{ratio:.2f}× the {num(s['rate_before'])} req/s just before; the server held "
                  f"{s['held']:.0f}, closed {s['closed']['evicted']:,.0f} to make room, refused "
                  f"{s['closed']['limit'] + s['closed']['peer_limit']:,.0f}; the flood reopened {s['reopened']:,}",
                  cpu=f"{s['cpu_us_during']:.1f} (before: {s['cpu_us_before']:.1f})",
                  goals=f"OK ≥ 0.99: {goal(share >= 0.99)}; rate ≥ 0.8× before: {goal(ratio >= 0.8)}")


def fmt_s(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1000:,.0f} ms"
