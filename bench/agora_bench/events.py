"""The change feeds on NATS JetStream against the producers' Watch streams, in one run:

- `followed`: the catalog's CreateProduct rate (eight writers) and its CPU per event with 1, 4 and 16
  consumers following its feed (offers processes, each on its own SQLite file, on the load core with
  customers, h2load and, for JetStream, the nats-server), Watch streams against JetStream. The CPU is
  the catalog's from the start of the load until every consumer has applied every event, divided by
  the events: what serving the feed costs the producer, catch-up included. For JetStream the
  nats-server's CPU per event is reported beside it.
- `apply_throughput`: how fast offers on PostgreSQL applies a backlog of the catalog's events from
  JetStream's partitions with 1 and with 3 replicas (unpinned: both cores): the rate between 10 % and
  90 % of the backlog applied, so that neither the start (replicas agreeing on their shares) nor the
  last partitions' tail counts; the time to the last event beside it.

The nats-server is Debian's, plaintext on loopback like every benchmark service (AGORA_INSECURE=1)."""

import json
import shutil
import socket
import sqlite3
import time

import grpc

from .data import POSTGRES_URL, postgres_backends_cpu, psql
from .runner import BOUND, LOAD_CPU, QUICK, RELEASE, Bench, call, frame, log, metric, service_env, start_service
from .scenarios import CREATE_PRODUCT_PATH, WRITERS, new_product_request

from agora_local import partition_of  # noqa: E402 (clients/python, on the path runner puts it on)

FOLLOWERS = (1, 4) if QUICK else (1, 4, 16)
BACKLOG = 2_000 if QUICK else 20_000  # events offers applies in apply_throughput
REPLICAS = (1, 3)


class Nats:
    """A nats-server with JetStream on a free port, its store under the run's work directory."""

    def __init__(self, bench: Bench):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        store = bench.work / "nats"
        self.server = bench.procs.start("nats", ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                                 "-sd", str(store)], core=LOAD_CPU)
        deadline = time.monotonic() + BOUND
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.server.p.poll() is not None:
                    raise RuntimeError(f"nats-server did not start; see {self.server.logfile}")
                time.sleep(0.01)
        self.env = dict(AGORA_EVENTS="jetstream", AGORA_NATS_URL=f"nats://127.0.0.1:{self.port}")

    def stop(self) -> None:
        self.server.stop()


def events(bench: Bench, created: list, pg_url: str | None) -> None:
    if shutil.which("nats-server") is None:
        bench.results["events"] = {"skipped": "nats-server is not installed (Debian: apt-get install nats-server)"}
        log("events: skipped, nats-server is not installed")
        return
    nats = Nats(bench)
    try:
        for n in FOLLOWERS:
            for transport in ("watch", "jetstream"):
                followed(bench, nats, transport, n)
        if pg_url is None:
            bench.results["apply"] = {"skipped": "PostgreSQL is not reachable"}
        else:
            apply_throughput(bench, nats, pg_url, created)
    finally:
        nats.stop()


def applied(servers: list) -> list[float]:
    """Each consumer's count of the catalog's events applied."""
    return [metric(s.metrics(), "agora_feed_applied_total", feed="catalog") for s in servers]


def followed(bench: Bench, nats: Nats, transport: str, n: int) -> None:
    w, procs = bench.work, bench.procs
    tag = f"{transport}-{n}"
    env = nats.env if transport == "jetstream" else {}
    catalog_db = w / f"events-catalog-{tag}.db"
    catalog = start_service(procs, f"catalog-{tag}", "catalog", f"sqlite:{catalog_db}", **env).wait_serving()
    customers = start_service(procs, f"customers-{tag}", "customers", f"sqlite:{w / f'events-customers-{tag}.db'}",
                              core=LOAD_CPU, **env).wait_serving()
    up = dict(AGORA_CATALOG_ADDRS=f"http://{catalog.grpc}", AGORA_CUSTOMERS_ADDRS=f"http://{customers.grpc}", **env)
    consumers = [start_service(procs, f"offers-{tag}-{i}", "offers", f"sqlite:{w / f'events-offers-{tag}-{i}.db'}",
                               core=LOAD_CPU, **up).wait_serving() for i in range(n)]
    cat = bench.client.catalog
    key = f"followed_{transport}_{n}"
    try:
        request = new_product_request(bench, catalog.grpc)

        def check():
            code, _, details = call(catalog.grpc, CREATE_PRODUCT_PATH, request, cat.CreateProductResponse)
            return None if code == grpc.StatusCode.OK else f"{code.name}: {details}"

        def events_so_far() -> int:
            with sqlite3.connect(f"file:{catalog_db}?mode=ro", uri=True, timeout=5) as conn:
                return conn.execute("SELECT count(*) FROM outbox_events").fetchone()[0]

        # Every consumer at the head before the load, so the figures are the load's.
        wait_applied(consumers, events_so_far())
        events0, cpu0, nats0 = events_so_far(), catalog.cpu_seconds(), nats.server.cpu_seconds()
        label = (f"Agora catalog, CreateProduct, SQLite, {WRITERS} writers, {n} consumer{'s' if n > 1 else ''} "
                 f"following, {'Watch streams' if transport == 'watch' else 'JetStream'}")
        res = bench.load(key, label, catalog.grpc, CREATE_PRODUCT_PATH, frame(request), check, servers=[catalog],
                         method=CREATE_PRODUCT_PATH, clients=WRITERS, streams=1, at80=False)
        stopped = time.monotonic()
        total = events_so_far()
        res["caught_up"] = time.monotonic() - stopped if wait_applied(consumers, total) else None
        events = max(1, total - events0)
        res["producer_us_event"] = (catalog.cpu_seconds() - cpu0) * 1e6 / events
        res["nats_us_event"] = (nats.server.cpu_seconds() - nats0) * 1e6 / events if transport == "jetstream" else None
        res["events"] = events
        log(f"{label}: the catalog {res['producer_us_event']:.1f} us of CPU an event, catch-up included"
            + (f", nats-server {res['nats_us_event']:.1f} us" if res["nats_us_event"] is not None else "")
            + f"; consumers at the head {res['caught_up'] or 'never'} s after the load")
    finally:
        for server in (*consumers, customers, catalog):
            server.stop()


def wait_applied(consumers: list, events: int) -> bool:
    """Waits (bounded) until every consumer has applied `events` of the catalog's events."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        if all(a >= events for a in applied(consumers)):
            return True
        time.sleep(0.01)
    return False


def apply_throughput(bench: Bench, nats: Nats, pg_url: str, created: list) -> None:
    """A backlog of BACKLOG catalog events on JetStream, applied by offers on PostgreSQL with 1, then 3
    replicas, each time on a new database."""
    w, procs = bench.work, bench.procs
    catalog = start_service(procs, "catalog-backlog", "catalog", f"sqlite:{w / 'backlog-catalog.db'}",
                            **nats.env).wait_serving()
    customers = start_service(procs, "customers-backlog", "customers", f"sqlite:{w / 'backlog-customers.db'}",
                              core=LOAD_CPU, **nats.env).wait_serving()
    try:
        request = new_product_request(bench, catalog.grpc)
        bench.h2.run(catalog.grpc, CREATE_PRODUCT_PATH, frame(request), n=BACKLOG, clients=WRITERS, streams=1)
        with sqlite3.connect(f"file:{w / 'backlog-catalog.db'}?mode=ro", uri=True, timeout=5) as conn:
            events = conn.execute("SELECT count(*) FROM outbox_events").fetchone()[0]
        deadline = time.monotonic() + BOUND
        while metric(catalog.metrics(), "agora_events_relayed_total") < events and time.monotonic() < deadline:
            time.sleep(0.05)
        # Where each partition's cursor ends: the stream sequence of its last event (the stream holds the
        # outbox's events in order, from 1).
        last = {}
        with sqlite3.connect(f"file:{w / 'backlog-catalog.db'}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT payload FROM outbox_events ORDER BY sequence").fetchall()
        for seq, (payload,) in enumerate(rows, 1):
            data = json.loads(payload)["data"]
            last[f"catalog/{partition_of(data.get('id') or data['product_id'])}"] = seq
        base, _, query = pg_url.partition("?")
        for replicas in REPLICAS:
            db = base.rsplit("/", 1)[1] + f"_apply_{replicas}"
            created.append(db)
            psql(POSTGRES_URL, f"CREATE DATABASE {db}")
            url = base.rsplit("/", 1)[0] + "/" + db + (f"?{query}" if query else "")
            up = dict(AGORA_CATALOG_ADDRS=f"http://{catalog.grpc}", AGORA_CUSTOMERS_ADDRS=f"http://{customers.grpc}",
                      **nats.env)
            started = time.monotonic()
            offers = [procs.start(f"offers-apply-{replicas}-{i}", [str(RELEASE / "agora-offers")],
                                  service_env(url, **up), pin=False) for i in range(replicas)]
            try:
                for s in offers:
                    s.wait_serving()
                samples = applied_over_time(offers, events, lambda: cursors_at(url) == last)
                done = samples[-1][1] >= events
                seconds = samples[-1][0] - started
                shares = [int(metric(s.metrics(), "agora_events_partition_owned", feed="catalog")) for s in offers]
                offers_cpu = sum(s.cpu_seconds() for s in offers)
                postgres_cpu = postgres_backends_cpu(db)
                t10 = next(t for t, n in samples if n >= 0.1 * events)
                t90 = next((t for t, n in samples if n >= 0.9 * events), None)
                rate = 0.8 * events / (t90 - t10) if done and t90 and t90 > t10 else None
                bench.results[f"apply_{replicas}"] = {
                    "replicas": replicas, "events": events, "seconds": seconds if done else None,
                    "rate": rate, "shares": shares,
                    "offers_us_event": offers_cpu * 1e6 / events, "postgres_us_event": postgres_cpu * 1e6 / events}
                log(f"offers on PostgreSQL, {replicas} replica(s): {rate or 0:,.0f} events/s between 10 and 90 %, "
                    f"all {events} applied {seconds:.2f} s after the start, partitions {shares}; CPU an event: "
                    f"offers {offers_cpu * 1e6 / events:.0f} us, PostgreSQL {postgres_cpu * 1e6 / events:.0f} us"
                    if done else
                    f"offers on PostgreSQL, {replicas} replica(s): not caught up within {BOUND} s")
            finally:
                for s in offers:
                    s.stop()
    finally:
        customers.stop()
        catalog.stop()


def applied_over_time(consumers: list, events: int, all_applied) -> list[tuple[float, float]]:
    """(time, events the replicas together have applied), every 10 ms until all `events` are (bounded).
    The count is the replicas' metrics; a replica that hands a partition over may stop between a commit
    and its count, so the end is the partitions' cursors at their last events (`all_applied`), checked
    once the count stops growing."""
    samples = []
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        samples.append((time.monotonic(), sum(applied(consumers))))
        if samples[-1][1] >= events:
            break
        if len(samples) > 10 and samples[-1][1] == samples[-10][1] and all_applied():
            samples[-1] = (samples[-1][0], events)
            break
        time.sleep(0.01)
    return samples


def cursors_at(url: str) -> dict:
    """Each catalog partition's cursor in offers' database: its stream sequence."""
    rows = psql(url, "SELECT feed, stream_sequence FROM feed_cursors WHERE feed LIKE 'catalog/%'")
    return {feed: int(seq) for feed, seq in (line.split("|") for line in rows.splitlines() if line)}
