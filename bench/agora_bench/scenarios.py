"""The measurements, one function per scenario, and `run_all`, which runs them in order.

Each scenario starts the servers it needs, measures through `Bench` (which keeps the
results under fixed keys, the ones report.render reads) and stops its servers, whatever
happens:

  getproduct_side_by_side  bare tonic (alone, and behind the runtime contract's crates: the
                           bound), Python grpc.aio and the Agora catalog on SQLite (plain, over
                           gRPC-Web, TLS, TLS and token, traces of 100 % and 1 % of calls) and
                           PostgreSQL, measured in turns (bare, bare_contract, python, get_sqlite,
                           get_web, bare_tls, bare_contract_secure, get_tls, get_secure,
                           get_traced, get_traced_1, get_postgres)
  list_available_offers    offers on SQLite (available)
  writes                   CreateProduct and CreateOffer, eight writers, SQLite synchronous=normal and full
                           (create_product_normal, create_offer_normal, create_product_full, create_offer_full)
  scale                    GetProduct and a deep ListProducts page on SMALL and LARGE products
                           (scale_get_small, scale_list_small, scale_get_large, scale_list_large)
  stream_products          StreamProducts of LARGE products: rows/s and peak memory, and the bare
                           server's one statement, the bound (stream_python, stream_h2load, stream_bound)
  startup_and_idle         start-up time of every service and its idle memory (startup)
  overload                 ten times the admitted concurrency, health polled meanwhile (overload)
  abuse                    1,000 stalled streams and 10,000 idle connections: memory, and the
                           GetProduct rate meanwhile (abuse_stalled, abuse_idle; in abuse.py)
"""

import sqlite3
import statistics
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .abuse import abuse
from .faults import faults
from .data import Data, expected_available, offers_postgres, postgres_backends_cpu, prepare, product_id, psql
from .references import start_bare, start_otlp_sink, start_python_peer
from .report import publish
from .runner import (BOUND, CLIENTS, LARGE, LOAD_CPU, OFFERS, OVERLOAD_CLIENTS, OVERLOAD_LIMIT, OVERLOAD_STREAMS,
                     QUICK, ROUNDS, RUN_SECONDS, SERVICES, SMALL, STARTS, STREAM_REPEATS, STREAMS, Bench, H2load, Procs, Server, call,
                     cpu_seconds, fmt_ms, frame, log, metric_delta, percentile, start_service, stream_count)

GET_PATH = "/agora.catalog.v1.CatalogService/GetProduct"
LIST_PATH = "/agora.catalog.v1.CatalogService/ListProducts"
STREAM_PATH = "/agora.catalog.v1.CatalogService/StreamProducts"
AVAILABLE_PATH = "/agora.offers.v1.OfferService/ListAvailableOffers"
CREATE_PATH = "/agora.offers.v1.OfferService/CreateOffer"
MIDDLE = product_id(SMALL // 2)  # the product GetProduct asks for in the small catalog


def run_all(bench: Bench, info: dict, created: list) -> None:
    """Prepares the data, measures every scenario in the order of the table's rows, prints the table
    and, in a full run, writes it into BENCHMARKS.md."""
    data = prepare(bench.procs, bench.work, created)
    getproduct_side_by_side(bench, data)
    available_count = list_available_offers(bench, data)
    writes(bench, data)
    offers_replicas(bench, data, created)
    scale(bench, data)
    stream_products(bench, data)
    startup_and_idle(bench, data)
    overload(bench, data)
    from .events import events  # here: events takes the write rows' request and settings from this module
    events(bench, created, data.pg_url)
    abuse(bench, data, get_body(bench))
    faults(bench, data, created)
    publish(bench, info, {"available_count": available_count}, data.pg_skip)


def get_check(bench: Bench, addr: str, want: str = MIDDLE, tls: bool = False, token: str | None = None):
    """A check for Bench: GetProduct of `want` answers OK with that product, at revision 1, priced
    (over TLS trusting the development CA, with `token`, when `tls`)."""
    cat = bench.client.catalog

    def check():
        channel = bench.dev.channel(addr, token) if tls else None
        code, resp, details = call(addr, GET_PATH, cat.GetProductRequest(product_id=want), cat.GetProductResponse,
                                   channel=channel)
        if code != grpc.StatusCode.OK:
            return f"{code.name}: {details}"
        if resp.product.product_id != want or resp.product.etag != "r1" or not resp.product.price.currency_code:
            return f"unexpected product {resp.product}"
        return None
    return check


def get_body(bench: Bench, want: str = MIDDLE) -> bytes:
    return frame(bench.client.catalog.GetProductRequest(product_id=want))


# ---------------------------------------------------------------- GetProduct, side by side


def getproduct_side_by_side(bench: Bench, data: Data) -> None:
    """GetProduct: bare, Python peer, full stack on SQLite and PostgreSQL, side by side in turns."""
    procs, started = bench.procs, []
    try:
        bare = start_bare(procs, data.small_db)
        started.append(bare)
        bare_contract = start_bare(procs, data.small_db, contract=True)
        started.append(bare_contract)
        peer = start_python_peer(procs, data.small_db, bench.client.dir)
        started.append(peer)
        catalog = start_service(procs, "catalog", "catalog", f"sqlite:{data.small_db}")
        started.append(catalog.wait_serving())
        contenders = [
            dict(key="bare", label="bare tonic, GetProduct from memory", addr=bare.grpc, servers=[bare]),
            dict(key="bare_contract", label="bare tonic behind the runtime contract's crates (request id, span, "
                 "metrics, panic, deadline, shedding), GetProduct from memory", addr=bare_contract.grpc,
                 servers=[bare_contract]),
            dict(key="python", label="Python grpc.aio, GetProduct, SQLite", addr=peer.grpc, servers=[peer]),
            dict(key="get_sqlite", label=f"Agora catalog, GetProduct, SQLite ({SMALL:,} products)",
                 addr=catalog.grpc, servers=[catalog], method=GET_PATH),
            # The same catalog called as a browser calls it: gRPC-Web on the same port.
            dict(key="get_web", label="Agora catalog, GetProduct over gRPC-Web, SQLite", addr=catalog.grpc,
                 servers=[catalog], method=GET_PATH, web=True),
        ]
        # The cost of security: the same catalog with TLS, then with TLS and a token on every call.
        catalog_tls = start_service(procs, "catalog-tls", "catalog", f"sqlite:{data.small_db}",
                                    **bench.dev.env("catalog", tokens=False))
        started.append(catalog_tls.wait_serving())
        catalog_secure = start_service(procs, "catalog-secure", "catalog", f"sqlite:{data.small_db}",
                                       **bench.dev.env("catalog"))
        started.append(catalog_secure.wait_serving())
        token = bench.dev.token("customer", "cus_bench")
        bare_tls = start_bare(procs, data.small_db, tls=bench.dev.env("catalog"))
        started.append(bare_tls)
        bare_secure = start_bare(procs, data.small_db, tls=bench.dev.env("catalog"), contract=True)
        started.append(bare_secure)
        contenders += [
            dict(key="bare_tls", label="bare tonic, GetProduct from memory, TLS 1.3", addr=bare_tls.grpc,
                 servers=[bare_tls], tls=True),
            dict(key="bare_contract_secure", label="bare tonic behind the runtime contract's crates, TLS 1.3 and "
                 "a customer's token", addr=bare_secure.grpc, servers=[bare_secure], tls=True, token=token),
            dict(key="get_tls", label="Agora catalog, GetProduct, SQLite, TLS 1.3", addr=catalog_tls.grpc,
                 servers=[catalog_tls], method=GET_PATH, tls=True),
            dict(key="get_secure", label="Agora catalog, GetProduct, SQLite, TLS 1.3 and a customer's token",
                 addr=catalog_secure.grpc, servers=[catalog_secure], method=GET_PATH, tls=True, token=token),
        ]
        # The cost of traces: every call traced, then 1 % of them, exported to a collector that
        # keeps nothing (off the server's core), against the same catalog without traces.
        sink = start_otlp_sink(procs)
        started.append(sink)
        for key, ratio, what in (("get_traced", "1.0", "100 %"), ("get_traced_1", "0.01", "1 %")):
            traced = start_service(procs, f"catalog-{key}", "catalog", f"sqlite:{data.small_db}",
                                   OTEL_EXPORTER_OTLP_ENDPOINT=f"http://{sink.grpc}",
                                   OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=ratio)
            started.append(traced.wait_serving())
            contenders.append(dict(key=key, label=f"Agora catalog, GetProduct, SQLite, traces of {what} of calls",
                                   addr=traced.grpc, servers=[traced], method=GET_PATH))
        if data.pg_db:
            catalog_pg = start_service(procs, "catalog", "catalog", data.pg_url)
            started.append(catalog_pg.wait_serving())
            contenders.append(dict(key="get_postgres", label=f"Agora catalog, GetProduct, PostgreSQL ({SMALL:,} products)",
                                   addr=catalog_pg.grpc, servers=[catalog_pg], method=GET_PATH,
                                   extra_cpu=lambda: postgres_backends_cpu(data.pg_db)))
        for c in contenders:
            c.update(path=GET_PATH, body=get_body(bench),
                     check=get_check(bench, c["addr"], tls=c.get("tls", False), token=c.get("token")))
        bench.contest(contenders)
    finally:
        for s in started:
            s.stop()


# ---------------------------------------------------------------- offers


def list_available_offers(bench: Bench, data: Data) -> int:
    """ListAvailableOffers on SQLite, for a customer with personal offers; returns how many offers it answers."""
    off = bench.client.offers
    db = sqlite3.connect(data.offers_db)
    (customer,) = db.execute("SELECT customer_id FROM offers WHERE customer_id != '' AND product_id = ? LIMIT 1",
                             (product_id(3),)).fetchone()
    db.close()
    avail_req = off.ListAvailableOffersRequest(customer_id=customer, product_id=product_id(3))

    offers = start_service(bench.procs, "offers-read", "offers", f"sqlite:{data.offers_db}",
                           AGORA_CATALOG_ADDRS="http://127.0.0.1:9", AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9",
                           AGORA_LOG="error").wait_serving()
    try:
        def avail_check():
            want = expected_available(data.offers_db, customer, product_id(3), int(time.time() * 1e6))
            code, resp, details = call(offers.grpc, AVAILABLE_PATH, avail_req, off.ListAvailableOffersResponse)
            if code != grpc.StatusCode.OK:
                return f"{code.name}: {details}"
            if resp.fallback or len(resp.offers) != want or want == 0:
                return f"{len(resp.offers)} offers (fallback {resp.fallback}) instead of {want}"
            return None
        available_count = expected_available(data.offers_db, customer, product_id(3), data.now)
        bench.load("available", f"Agora offers, ListAvailableOffers, SQLite ({OFFERS:,} offers)", offers.grpc,
                   AVAILABLE_PATH, frame(avail_req), avail_check, servers=[offers], method=AVAILABLE_PATH)
    finally:
        offers.stop()
    return available_count


WRITERS = 8  # concurrent writers of the write rows: h2load -c 8 -m 1
CREATE_PRODUCT_PATH = "/agora.catalog.v1.CatalogService/CreateProduct"
FAMILY_PATH = "/agora.catalog.v1.CatalogService/CreateFamily"


def writes(bench: Bench, data: Data) -> None:
    """CreateProduct (the catalog alone) and CreateOffer (offers following the catalog's feed, with catalog
    and customers beside it), eight writers each, at both SQLite durability settings (normal, the default,
    and full), each on new files (create_product_normal, create_offer_normal, create_product_full,
    create_offer_full)."""
    for sync in ("normal", "full"):
        create_product(bench, sync)
        create_offer(bench, sync)
    create_product_followed(bench)


def new_product_request(bench: Bench, addr: str):
    """A family made at `addr`, and a CreateProduct request for a product in it."""
    cat = bench.client.catalog
    code, fam, details = call(addr, FAMILY_PATH, cat.CreateFamilyRequest(family=cat.Family(display_name="Lamps")),
                              cat.CreateFamilyResponse)
    if code != grpc.StatusCode.OK:
        raise RuntimeError(f"CreateFamily: {code.name}: {details}")
    money = bench.client.money
    return cat.CreateProductRequest(product=cat.Product(
        display_name="Desk lamp", description="A lamp for a desk", family_id=fam.family.family_id,
        price=money.Money(currency_code="EUR", amount_minor=3990)))


def create_product(bench: Bench, sync: str) -> None:
    cat = bench.client.catalog
    db = bench.work / f"writes-catalog-{sync}.db"
    catalog = start_service(bench.procs, f"catalog-{sync}", "catalog", f"sqlite:{db}",
                            AGORA_SQLITE_SYNCHRONOUS=sync).wait_serving()
    try:
        request = new_product_request(bench, catalog.grpc)

        def check():
            code, resp, details = call(catalog.grpc, CREATE_PRODUCT_PATH, request, cat.CreateProductResponse)
            if code != grpc.StatusCode.OK:
                return f"{code.name}: {details}"
            if not resp.product.product_id.startswith("prd_"):
                return f"unexpected product {resp.product}"
            return None

        bench.load(f"create_product_{sync}", f"Agora catalog, CreateProduct, SQLite, synchronous={sync}, "
                   f"{WRITERS} writers", catalog.grpc, CREATE_PRODUCT_PATH, frame(request), check,
                   servers=[catalog], method=CREATE_PRODUCT_PATH, clients=WRITERS, streams=1, at80=False)
    finally:
        catalog.stop()


def create_product_followed(bench: Bench) -> None:
    """The system's write rate: CreateProduct with eight writers on the catalog (on the server core, as
    the catalog-alone row) while offers and shopping follow its feed, each on its own SQLite file (on the
    load core, beside h2load; customers too, whose feed they also follow); then how long after the load
    stops both consumers have applied every event (their cursors at the catalog's head)."""
    import sqlite3
    procs, w = bench.procs, bench.work
    catalog_db = w / "followed-catalog.db"
    catalog = start_service(procs, "catalog-followed", "catalog", f"sqlite:{catalog_db}").wait_serving()
    customers = start_service(procs, "customers-followed", "customers", f"sqlite:{w / 'followed-customers.db'}",
                              core=LOAD_CPU).wait_serving()
    up = dict(AGORA_CATALOG_ADDRS=f"http://{catalog.grpc}", AGORA_CUSTOMERS_ADDRS=f"http://{customers.grpc}")
    consumers = {name: start_service(procs, f"{name}-followed", name, f"sqlite:{w / f'followed-{name}.db'}",
                                     core=LOAD_CPU, **up).wait_serving() for name in ("offers", "shopping")}
    cat = bench.client.catalog

    def read(path, sql):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(sql).fetchone()
        return row[0] if row and row[0] is not None else 0

    def behind() -> bool:
        head = read(catalog_db, "SELECT MAX(sequence) FROM outbox_events")
        return any(read(w / f"followed-{name}.db", "SELECT sequence FROM feed_cursors WHERE feed = 'catalog'") < head
                   for name in consumers)

    try:
        request = new_product_request(bench, catalog.grpc)

        def check():
            code, resp, details = call(catalog.grpc, CREATE_PRODUCT_PATH, request, cat.CreateProductResponse)
            return None if code == grpc.StatusCode.OK else f"{code.name}: {details}"

        res = bench.load("create_product_followed", f"Agora catalog, CreateProduct, SQLite, {WRITERS} writers, "
                         "offers and shopping following its feed", catalog.grpc, CREATE_PRODUCT_PATH,
                         frame(request), check, servers=[catalog, *consumers.values()], method=CREATE_PRODUCT_PATH,
                         clients=WRITERS, streams=1, at80=False)
        stopped = time.monotonic()
        while behind() and time.monotonic() - stopped < BOUND:
            time.sleep(0.01)
        res["caught_up"] = None if behind() else time.monotonic() - stopped
    finally:
        for server in (*consumers.values(), customers, catalog):
            server.stop()


def create_offer(bench: Bench, sync: str) -> None:
    """CreateOffer on a product offers knows from the catalog's feed: the catalog is not asked (the run
    counts its GetProduct calls)."""
    procs, client, off = bench.procs, bench.client, bench.client.offers
    w = bench.work
    catalog = start_service(procs, f"catalog-{sync}", "catalog", f"sqlite:{w / f'offers-catalog-{sync}.db'}")
    customers = start_service(procs, f"customers-{sync}", "customers", f"sqlite:{w / f'customers-{sync}.db'}")
    catalog.wait_serving()
    customers.wait_serving()
    offers = start_service(procs, f"offers-{sync}", "offers", f"sqlite:{w / f'offers-create-{sync}.db'}",
                           AGORA_SQLITE_SYNCHRONOUS=sync, AGORA_CATALOG_ADDRS=f"http://{catalog.grpc}",
                           AGORA_CUSTOMERS_ADDRS=f"http://{customers.grpc}").wait_serving()
    try:
        code, made, details = call(catalog.grpc, CREATE_PRODUCT_PATH, new_product_request(bench, catalog.grpc),
                                   client.catalog.CreateProductResponse)
        if code != grpc.StatusCode.OK:
            raise RuntimeError(f"CreateProduct: {code.name}: {details}")
        product = made.product.product_id
        start = int(time.time()) - 60
        new_offer = off.Offer(product_id=product, kind=off.OFFER_KIND_SPEED, discount_percent=10,
                              start_time=client.timestamp(seconds=start),
                              end_time=client.timestamp(seconds=start + 24 * 3600))
        create_req = off.CreateOfferRequest(offer=new_offer)

        def create_check():
            code, resp, details = call(offers.grpc, CREATE_PATH, create_req, off.CreateOfferResponse)
            if code != grpc.StatusCode.OK:
                return f"{code.name}: {details}"
            if not resp.offer.offer_id or resp.offer.product_id != product:
                return f"unexpected offer {resp.offer}"
            return None

        res = bench.load(f"create_offer_{sync}", f"Agora offers, CreateOffer, SQLite, synchronous={sync}, "
                         f"{WRITERS} writers", offers.grpc, CREATE_PATH, frame(create_req), create_check,
                         servers=[offers, catalog, customers], method=CREATE_PATH, clients=WRITERS, streams=1,
                         at80=False)
        m0, m1 = res["metrics"]
        res["upstream_calls"] = metric_delta(m0[catalog.name], m1[catalog.name], "grpc_server_handling_seconds_count",
                                             grpc_method="GetProduct")
    finally:
        offers.stop()
        customers.stop()
        catalog.stop()


# ---------------------------------------------------------------- replicas


IDLE_SECONDS = 2 if QUICK else 5  # how long new PostgreSQL sessions are counted while idle


def offers_replicas(bench: Bench, data: Data, created: list) -> None:
    """Offers on PostgreSQL, one replica then two on the same database: ListAvailableOffers with the
    load spread over the replicas (two h2load runs at once, half the connections each), the PostgreSQL
    sessions held, and the sessions opened while idle (a replica that does not lead a feed waits for
    its lock on one session; it must not reconnect)."""
    if data.pg_url is None:
        bench.results["replicas"] = {"skipped": data.pg_skip}
        return
    off = bench.client.offers
    db, url = offers_postgres(bench.procs, data.pg_url, created)
    customer = psql(url, "SELECT customer_id FROM offers WHERE customer_id != '' AND product_id = "
                         f"'{product_id(3)}' LIMIT 1")
    request = off.ListAvailableOffersRequest(customer_id=customer, product_id=product_id(3))
    body = frame(request)
    up = dict(AGORA_CATALOG_ADDRS="http://127.0.0.1:9", AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9", AGORA_LOG="error")
    replicas = [start_service(bench.procs, "offers-pg-1", "offers", url, **up).wait_serving()]

    def check(addr):
        def run():
            now = int(time.time() * 1e6)
            want = int(psql(url, f"SELECT count(*) FROM offers WHERE state = 'ACTIVE' AND customer_id IN "
                                 f"('', '{customer}') AND start_time <= {now} AND end_time > {now} "
                                 f"AND product_id = '{product_id(3)}'"))
            code, resp, details = call(addr, AVAILABLE_PATH, request, off.ListAvailableOffersResponse)
            if code != grpc.StatusCode.OK:
                return f"{code.name}: {details}"
            if resp.fallback or len(resp.offers) != want or want == 0:
                return f"{len(resp.offers)} offers (fallback {resp.fallback}) instead of {want}"
            return None
        return run

    def sessions() -> int:
        return int(psql(data.pg_url, f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"))

    def opened_while_idle() -> float:
        """New sessions a second on the database while nobody calls."""
        count = f"SELECT sessions FROM pg_stat_database WHERE datname = '{db}'"
        before = int(psql(data.pg_url, count))
        time.sleep(IDLE_SECONDS)
        return (int(psql(data.pg_url, count)) - before) / IDLE_SECONDS

    pg_cpu = lambda: postgres_backends_cpu(db)  # noqa: E731
    try:
        one = bench.load("replicas_1", "Agora offers, ListAvailableOffers, PostgreSQL, 1 replica",
                         replicas[0].grpc, AVAILABLE_PATH, body, check(replicas[0].grpc), servers=replicas,
                         method=AVAILABLE_PATH, at80=False, extra_cpu=pg_cpu)
        one.update(sessions=sessions(), opened=opened_while_idle())
        replicas.append(start_service(bench.procs, "offers-pg-2", "offers", url, **up).wait_serving())
        two = spread(bench, "Agora offers, ListAvailableOffers, PostgreSQL, 2 replicas", replicas, AVAILABLE_PATH,
                     body, [check(r.grpc) for r in replicas], pg_cpu)
        two.update(sessions=sessions(), opened=opened_while_idle())
        bench.results["replicas_2"] = two
    finally:
        for r in replicas:
            r.stop()


def spread(bench: Bench, label: str, servers: list, path: str, body: bytes, checks: list, extra_cpu) -> dict:
    """The load of one capacity run spread over `servers`: one h2load per server at once, each with its
    share of the connections, for RUN_SECONDS; calls a second summed, CPU per call over every server
    (and `extra_cpu`)."""
    log(f"{label}: measuring")
    checked = all(bench.check(f"{label} (before)", c) for c in checks)
    h2s = []
    for i in range(len(servers)):
        work = bench.work / f"spread-{i}"
        work.mkdir(exist_ok=True)
        h2s.append(H2load(work))
    clients = max(1, CLIENTS // len(servers))
    runs: list = [None] * len(servers)
    cpu0 = [cpu_seconds(s.pid) for s in servers] + [extra_cpu()]

    def one(i):
        try:
            runs[i] = h2s[i].run(servers[i].grpc, path, body, duration=max(1, round(RUN_SECONDS)), clients=clients,
                                 streams=STREAMS)
        except Exception as err:  # raised again below, in the harness's thread
            runs[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(servers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu1 = [cpu_seconds(s.pid) for s in servers] + [extra_cpu()]
    for run in runs:
        if isinstance(run, Exception):
            raise run
    checked &= all(bench.check(f"{label} (after)", c) for c in checks)
    done = sum(r["http_200"] for r in runs)
    latencies = sorted(x for r in runs for x in r["latencies"])
    cpu = sum(b - a for a, b in zip(cpu0, cpu1))
    result = dict(label=label, rps=sum(r["rps"] for r in runs), p50=percentile(latencies, 50),
                  p99=percentile(latencies, 99), cpu_us_call=cpu * 1e6 / max(1, done),
                  failed=sum(r["failed"] for r in runs), checked=checked)
    log(f"{label}: {result['rps']:,.0f} req/s, p50 {fmt_ms(result['p50'])} ms, p99 {fmt_ms(result['p99'])} ms, "
        f"CPU {result['cpu_us_call']:.1f} us/call (PostgreSQL included)")
    return result


# ---------------------------------------------------------------- scale


def scale(bench: Bench, data: Data) -> None:
    """GetProduct and a deep ListProducts page, on the small and the large catalog."""
    for size, path in (("small", data.small_db), ("large", data.large_db)):
        count = SMALL if size == "small" else LARGE
        catalog = start_service(bench.procs, f"catalog-{size}", "catalog", f"sqlite:{path}").wait_serving()
        try:
            scale_catalog(bench, catalog, size, count)
        finally:
            catalog.stop()


def scale_catalog(bench: Bench, catalog: Server, size: str, count: int) -> None:
    cat = bench.client.catalog
    want = product_id(count // 2 + 1)
    bench.load(f"scale_get_{size}", f"scale: GetProduct, {count:,} products", catalog.grpc, GET_PATH,
               get_body(bench, want), get_check(bench, catalog.grpc, want),
               servers=[catalog], method=GET_PATH, at80=False)
    # The page after 90 % of the catalog, reached the way a client does: page after page.
    depth = count * 9 // 10
    deep_req = cat.ListProductsRequest(page_size=50, page_token=page_token_after(bench, catalog.grpc, depth))
    first_id = product_id(depth + 1)

    def deep_check(addr=catalog.grpc, req=deep_req, first_id=first_id):
        code, resp, details = call(addr, LIST_PATH, req, cat.ListProductsResponse)
        if code != grpc.StatusCode.OK:
            return f"{code.name}: {details}"
        if len(resp.products) != 50 or resp.products[0].product_id != first_id:
            return f"unexpected page: {len(resp.products)} products from {resp.products[:1]}"
        return None

    bench.load(f"scale_list_{size}", f"scale: ListProducts, page of 50 after {depth:,} of {count:,}",
               catalog.grpc, LIST_PATH, frame(deep_req), deep_check, servers=[catalog], method=LIST_PATH,
               at80=False)


def page_token_after(bench: Bench, addr: str, depth: int) -> str:
    """The page token after the first `depth` products, walking ListProducts 1,000 at a time."""
    cat = bench.client.catalog
    token, walked, deadline = "", 0, time.monotonic() + 600
    while walked < depth and time.monotonic() < deadline:
        step = min(1000, depth - walked)
        code, resp, details = call(addr, LIST_PATH, cat.ListProductsRequest(page_size=step, page_token=token),
                                   cat.ListProductsResponse, timeout=30)
        if code != grpc.StatusCode.OK:
            raise RuntimeError(f"walking ListProducts: {code.name}: {details}")
        token, walked = resp.next_page_token, walked + len(resp.products)
    return token


# ---------------------------------------------------------------- streaming


def stream_products(bench: Bench, data: Data) -> None:
    """StreamProducts over the large catalog: rows/s and the server's peak memory, read by a
    Python client once, then by h2load STREAM_REPEATS times."""
    catalog = start_service(bench.procs, "catalog-stream", "catalog", f"sqlite:{data.large_db}").wait_serving()
    try:
        log(f"StreamProducts: {LARGE:,} products, Python reader then h2load reader")
        rss_before = catalog.status("VmRSS")
        bench.results["stream_python"] = stream_python_reader(bench, catalog)
        rss_mid = catalog.status("VmHWM")
        bench.results["stream_h2load"] = stream_h2load_reader(bench, catalog, rss_before, rss_mid)
    finally:
        catalog.stop()
    bench.results["stream_bound"] = stream_bound(bench, data)


def stream_bound(bench: Bench, data: Data) -> dict:
    """The least work the stream can do on sqlx: the bare server's StreamProducts (one statement over
    every product, rows as sqlx streams them), read by h2load as the catalog's stream is."""
    log(f"StreamProducts bound: the bare server's one statement over {LARGE:,} products")
    bare = start_bare(bench.procs, data.large_db)
    cat = bench.client.catalog
    try:
        def count_check():
            code, items, _ = stream_count(bare.grpc, STREAM_PATH, cat.StreamProductsRequest(),
                                          cat.StreamProductsResponse, "products")
            return None if code == grpc.StatusCode.OK and items == LARGE else f"{code.name}, {items} of {LARGE}"
        ok = bench.check("StreamProducts bound (before)", count_check)
        cpu0 = bare.cpu_seconds()
        run = bench.h2.run(bare.grpc, STREAM_PATH, frame(cat.StreamProductsRequest()), n=STREAM_REPEATS,
                           clients=1, streams=1)
        cpu1 = bare.cpu_seconds()
        ok &= bench.check("StreamProducts bound (after)", count_check) and run["done"] == STREAM_REPEATS
        median_s = statistics.median(run["latencies"]) / 1000 if run["latencies"] else run["seconds"]
        return {"rows_s": LARGE / median_s if median_s else 0, "seconds": median_s, "cpu_s": cpu1 - cpu0,
                "cpu_us_per_1000": (cpu1 - cpu0) * 1e9 / max(1, LARGE * STREAM_REPEATS), "checked": ok}
    finally:
        bare.stop()


def stream_python_reader(bench: Bench, catalog: Server) -> dict:
    cat = bench.client.catalog
    cpu0 = catalog.cpu_seconds()
    code, items, secs = stream_count(catalog.grpc, STREAM_PATH, cat.StreamProductsRequest(),
                                     cat.StreamProductsResponse, "products")
    cpu1 = catalog.cpu_seconds()
    py_ok = code == grpc.StatusCode.OK and items == LARGE
    if not py_ok:
        bench.failures.append(f"StreamProducts (Python reader): {code.name}, {items} of {LARGE}")
    return {"rows_s": items / secs if secs else 0, "seconds": secs, "items": items,
            "cpu_s": cpu1 - cpu0, "cpu_us_per_1000": (cpu1 - cpu0) * 1e9 / max(1, items),
            "checked": py_ok}


def stream_h2load_reader(bench: Bench, catalog: Server, rss_before: int, rss_mid: int) -> dict:
    """h2load reads the stream STREAM_REPEATS times, one at a time; the catalog's metrics count the rows."""
    cat = bench.client.catalog
    m0 = catalog.metrics()
    cpu0 = catalog.cpu_seconds()
    run = bench.h2.run(catalog.grpc, STREAM_PATH, frame(cat.StreamProductsRequest()), n=STREAM_REPEATS,
                       clients=1, streams=1)
    cpu1 = catalog.cpu_seconds()
    m1 = catalog.metrics()
    hwm = catalog.status("VmHWM")
    rows = metric_delta(m0, m1, "agora_catalog_stream_rows_read_total")
    ok_codes = metric_delta(m0, m1, "grpc_server_handled_total", grpc_method="StreamProducts", grpc_code="OK")
    h2_ok = rows == LARGE * STREAM_REPEATS and ok_codes == STREAM_REPEATS
    if not h2_ok:
        bench.failures.append(f"StreamProducts (h2load): {rows:.0f} rows read, {ok_codes:.0f} OK streams")
    after_ok = bench.check("StreamProducts (after)", lambda: None if stream_count(
        catalog.grpc, STREAM_PATH, cat.StreamProductsRequest(), cat.StreamProductsResponse, "products")[1] == LARGE
        else "wrong count")
    median_s = statistics.median(run["latencies"]) / 1000 if run["latencies"] else run["seconds"] / STREAM_REPEATS
    return {
        "rows_s": LARGE / median_s if median_s else 0,
        "seconds": median_s,
        "cpu_s": cpu1 - cpu0,
        "cpu_us_per_1000": (cpu1 - cpu0) * 1e9 / max(1, rows),
        "rss_before": rss_before,
        "stream_bytes": run["data_bytes"] / STREAM_REPEATS,
        "hwm_after_python": rss_mid,
        "hwm": hwm,
        "checked": h2_ok and after_ok,
    }


# ---------------------------------------------------------------- start-up and idle memory


def startup_and_idle(bench: Bench, data: Data) -> None:
    """Start-up (median of many starts) and idle memory of every service."""
    log(f"start-up: {STARTS} starts of each service")
    startup = {name: startup_times(bench.procs, bench.work, name) for name in SERVICES}
    idle_memory(bench.procs, bench.work, data.small_db, startup)
    bench.results["startup"] = startup


def startup_times(procs: Procs, work: Path, name: str) -> dict:
    """Milliseconds from exec to SERVING, STARTS times on an existing database and on a new one
    (which runs the migrations); upstreams point at a closed port, as no call is made."""
    db_path = work / f"start-{name}.db"
    times, first = [], []
    for i in range(STARTS):
        fresh = work / f"start-{name}-fresh-{i}.db"
        for target, into in ((fresh, first), (db_path, times)):
            s = start_service(procs, f"start-{name}", name, f"sqlite:{target}", AGORA_LOG="warn",
                              AGORA_CATALOG_ADDRS="http://127.0.0.1:9", AGORA_CUSTOMERS_ADDRS="http://127.0.0.1:9")
            try:
                s.wait_serving(bound=30)
                into.append((time.monotonic() - s.started) * 1000)
            finally:
                s.stop()
    return {"median": statistics.median(times), "p90": sorted(times)[int(len(times) * 0.9) - 1]
            if len(times) >= 10 else max(times), "first": statistics.median(first)}


def idle_memory(procs: Procs, work: Path, small_db: Path, startup: dict) -> None:
    """Idle memory: the four services wired together as make run starts them; into startup[name]["idle_rss"]."""
    catalog = start_service(procs, "idle-catalog", "catalog", f"sqlite:{small_db}").wait_serving()
    customers = start_service(procs, "idle-customers", "customers",
                              f"sqlite:{work / 'idle-customers.db'}").wait_serving()
    up = dict(AGORA_CATALOG_ADDRS=f"http://{catalog.grpc}", AGORA_CUSTOMERS_ADDRS=f"http://{customers.grpc}")
    offers = start_service(procs, "idle-offers", "offers", f"sqlite:{work / 'idle-offers.db'}", **up).wait_serving()
    shopping = start_service(procs, "idle-shopping", "shopping", f"sqlite:{work / 'idle-shopping.db'}",
                             **up).wait_serving()
    try:
        time.sleep(2 if QUICK else 5)
        for s in (catalog, customers, offers, shopping):
            startup[s.name.split("-")[1]]["idle_rss"] = s.status("VmRSS")
    finally:
        for s in (shopping, offers, customers, catalog):
            s.stop()


# ---------------------------------------------------------------- overload


def overload(bench: Bench, data: Data) -> None:
    """Overload: ListProducts (a page of 50, read from the database: GetProduct answers from memory too
    fast to queue) at the admitted concurrency for its capacity, then at ten times it, health polled;
    ROUNDS turns of the two, the median round kept."""
    catalog = start_service(bench.procs, "catalog-overload", "catalog", f"sqlite:{data.small_db}",
                            AGORA_CONCURRENCY_LIMIT=OVERLOAD_LIMIT).wait_serving()
    cat = bench.client.catalog
    body = frame(cat.ListProductsRequest(page_size=50))

    def check():
        code, resp, details = call(catalog.grpc, LIST_PATH, cat.ListProductsRequest(page_size=50),
                                   cat.ListProductsResponse)
        if code != grpc.StatusCode.OK:
            return f"{code.name}: {details}"
        return None if len(resp.products) == 50 else f"{len(resp.products)} products, not 50"

    try:
        # Capacity and overload in turns, ROUNDS times: the median round by the share served, so that
        # a burst of outside load falling on one of the two runs does not decide the ratio. Health is
        # polled through every overload run.
        rounds, polls = [], []
        for i in range(ROUNDS):
            capacity = bench.load("overload_capacity", f"overload: ListProducts at the limit ({OVERLOAD_LIMIT} "
                                  f"calls), round {i + 1} of {ROUNDS}", catalog.grpc, LIST_PATH, body, check,
                                  servers=[catalog], method=LIST_PATH, at80=False, clients=1, streams=OVERLOAD_LIMIT)
            stop_polling = threading.Event()
            poller = threading.Thread(target=poll_health, args=(catalog.grpc, polls, stop_polling), daemon=True)
            poller.start()
            try:
                res = bench.load("overload", f"overload: ListProducts, {OVERLOAD_CLIENTS * OVERLOAD_STREAMS} "
                                 f"streams, limit {OVERLOAD_LIMIT}", catalog.grpc, LIST_PATH, body, check,
                                 servers=[catalog], method=LIST_PATH, at80=False, clients=OVERLOAD_CLIENTS,
                                 streams=OVERLOAD_STREAMS, expected=("RESOURCE_EXHAUSTED",))
            finally:
                stop_polling.set()
                poller.join(timeout=10)
            m0, m1 = res["metrics"][0][catalog.name], res["metrics"][1][catalog.name]
            res["shed"] = metric_delta(m0, m1, "agora_grpc_server_shed_total")
            res["capacity"] = capacity["rps"]
            res["served"] = res["grpc_codes"].get("OK", 0) / max(1e-9, res["seconds"]) / max(1e-9, capacity["rps"])
            rounds.append((res, capacity))
        res, capacity = sorted(rounds, key=lambda r: r[0]["served"])[len(rounds) // 2]
        res["served_rounds"] = [r[0]["served"] for r in rounds]
        res["polls"] = len(polls)
        res["polls_serving"] = sum(1 for p in polls if p[0])
        res["poll_max_ms"] = max((p[1] for p in polls), default=0) * 1000
        bench.results["overload"], bench.results["overload_capacity"] = res, capacity
    finally:
        catalog.stop()


def poll_health(addr: str, polls: list, stop: threading.Event) -> None:
    """Health checks every 0.1 s until `stop` is set; each poll appends (SERVING?, seconds[, code])."""
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
                polls.append((status == health_pb2.HealthCheckResponse.SERVING, time.monotonic() - started))
            except grpc.RpcError as err:
                polls.append((False, time.monotonic() - started, err.code().name))
            stop.wait(0.1)
