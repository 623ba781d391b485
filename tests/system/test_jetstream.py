"""Change feeds on NATS JetStream (AGORA_EVENTS=jetstream), with real
processes: a real nats-server of the test's own (TLS, client certificates
verified), the catalog relaying its outbox to the stream AGORA_CATALOG, and
replicas of offers applying its partitions, all on PostgreSQL.

- A catalog SIGKILLed again and again while it relays under write load: the
  stream holds every event of the outbox once, in the outbox's order, each
  on its product's partition.
- Replicas of offers SIGKILLed again and again while they apply a burst
  (after a commit, before anything else): no event applied twice (the
  "feed event applied" lines of every replica's log, a line per event
  committed), every partition's cursor at its last event, every offer of a
  discontinued product withdrawn.
- nats-server killed for 10 s under write load and started again: every
  write succeeds meanwhile, the relay catches up (its lag back to 0), and
  offers applies every event exactly once.
- Three replicas of offers over 8 partitions: at every sample each
  partition has at most one replica applying it, in the steady state
  exactly one (3, 3 and 2 each), events applied in sequence order within
  each partition; a replica SIGKILLed has its partitions taken over
  within 2 s.

Run by `make test-system`; needs nats-server (Debian), psql and the
PostgreSQL of AGORA_TEST_POSTGRES_URL."""

import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
from agora_local import (Credentials, Nats, Replica, Workers, free_port, generated_client, partition_of,  # noqa: E402
                         psql, server_url)

PARTITIONS = 8
TAKEOVER_BOUND = 2.0
BOUND = 30.0


def eventually(condition, what: str, bound: float = BOUND):
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {bound} s"
        time.sleep(0.05)


class Backbone:
    """A nats-server, customers and the catalog once, offers as many times as a test asks; PostgreSQL
    databases of their own."""

    def __init__(self, work: Path, pb: dict):
        self.work, self.pb = work, pb
        self.logs = work / "logs"
        self.logs.mkdir()
        self.credentials = Credentials(work)
        self.nats = Nats(self.credentials, work).start()
        tag = f"agora_js_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.databases = {s: f"{tag}_{s}" for s in ("catalog", "customers", "offers")}
        for database in self.databases.values():
            psql("postgres", f"CREATE DATABASE {database}")
        self.ports = {s: free_port() for s in ("catalog", "customers", "offers")}
        self.catalog = Replica("catalog", "127.0.0.1", self.ports["catalog"], self.env("catalog"), None, self.logs)
        self.customers = Replica("customers", "127.0.0.1", self.ports["customers"], self.env("customers"), None,
                                 self.logs)
        self.offers: list[Replica] = []
        self.staff = self.credentials.token("staff")

    def env(self, service: str) -> dict:
        own = self.credentials.env(service)
        return dict(os.environ, **own, **self.nats.env(own),
                    AGORA_DATABASE_URL=server_url(self.databases[service]),
                    AGORA_CATALOG_ADDRS=f"https://127.0.0.1:{self.ports['catalog']}",
                    AGORA_CUSTOMERS_ADDRS=f"https://127.0.0.1:{self.ports['customers']}",
                    AGORA_DRAIN_DELAY_MS="0",
                    AGORA_OUTBOX_POLL_MS="100",
                    AGORA_LOG="info,agora_platform::feed=debug")

    def add_offers(self, ip: str) -> Replica:
        replica = Replica("offers", ip, self.ports["offers"], self.env("offers"), None, self.logs)
        self.offers.append(replica)
        return replica

    def stop(self) -> None:
        for replica in [self.catalog, self.customers, *self.offers]:
            if replica.alive():
                replica.kill()
        self.nats.kill()
        for database in self.databases.values():
            psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def stub(self, service: str, target: str | None = None):
        _, module = self.pb[service]
        name = {"catalog": "CatalogServiceStub", "offers": "OfferServiceStub"}[service]
        channel = self.credentials.channel_to(target or f"127.0.0.1:{self.ports[service]}", self.staff)
        return getattr(module, name)(channel)

    def outbox(self) -> list[tuple[int, str]]:
        """The catalog's outbox: (sequence, the product's id) of every event, in order."""
        rows = psql(self.databases["catalog"],
                    "SELECT sequence, COALESCE(payload::json->'data'->>'id', payload::json->'data'->>'product_id') "
                    "FROM outbox_events ORDER BY sequence")
        return [(int(s), key) for s, key in (line.split("|") for line in rows.splitlines() if line)]

    def relay_lag(self) -> float | None:
        return self.catalog.metric("agora_events_relay_lag_events", 'stream="AGORA_CATALOG"')

    def assert_stream_is_the_outbox(self) -> None:
        """Every outbox event once in the stream, in order, on its product's partition, with its id."""
        eventually(lambda: self.relay_lag() == 0, "the relay caught up")
        outbox = self.outbox()
        stream = self.nats.stream("AGORA_CATALOG")
        sequences = [int(headers["Agora-Sequence"]) for _, headers in stream]
        assert len(sequences) == len(set(sequences)), f"events published twice: {Counter(sequences).most_common(3)}"
        assert sequences == [s for s, _ in outbox], "the stream is not the outbox, in its order"
        for (subject, headers), (sequence, key) in zip(stream, outbox):
            assert subject == f"agora.catalog.v1.events.{partition_of(key)}", (subject, key)
            assert headers["Nats-Msg-Id"] == f"catalog-{sequence}"

    def applied(self) -> list[tuple[str, str, int]]:
        """Every "feed event applied" line of the catalog's partitions in the offers replicas' logs:
        (log, cursor key, sequence)."""
        lines = []
        for path in sorted(self.logs.glob("offers-*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if "feed event applied" in line:
                    plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
                    fields = {k: v.strip('"') for k, v in (f.split("=", 1) for f in plain.split() if "=" in f)}
                    if fields.get("cursor", "").startswith("catalog/"):
                        lines.append((path.name, fields["cursor"], int(fields["sequence"])))
        return lines

    def assert_applied_once_in_order(self) -> None:
        lines = self.applied()
        twice = [k for k, n in Counter((c, s) for _, c, s in lines).items() if n > 1]
        assert not twice, f"events applied twice: {twice[:5]}"
        last: dict = {}
        for log, cursor, sequence in lines:
            assert sequence > last.get((log, cursor), 0), f"{log}: {cursor} went back to {sequence}"
            last[(log, cursor)] = sequence

    def cursors(self) -> dict:
        rows = psql(self.databases["offers"], "SELECT feed, sequence FROM feed_cursors WHERE feed LIKE 'catalog/%'")
        return {feed: int(seq) for feed, seq in (line.split("|") for line in rows.splitlines() if line)}

    def caught_up(self) -> bool:
        """Every partition's cursor at its last event in the outbox."""
        last: dict = {}
        for sequence, key in self.outbox():
            last[f"catalog/{partition_of(key)}"] = sequence
        return self.cursors() == last


def timestamp(seconds_from_now: int) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(time.time()) + seconds_from_now)
    return ts


@pytest.fixture
def backbone():
    assert shutil.which("nats-server"), "the JetStream suite needs nats-server (Debian: apt-get install nats-server)"
    assert shutil.which("psql"), "the JetStream suite needs psql (postgresql-client)"
    work = Path(tempfile.mkdtemp(prefix="agora-jetstream-"))
    system = Backbone(work, generated_client())
    try:
        yield system
    finally:
        system.stop()
        print(f"logs of the JetStream suite: {system.logs}")


def family(system: Backbone) -> str:
    catalog_pb2, _ = system.pb["catalog"]
    return system.stub("catalog").CreateFamily(
        catalog_pb2.CreateFamilyRequest(family=catalog_pb2.Family(display_name="Lamps")), timeout=10
    ).family.family_id


def create_product(system: Backbone, family_id: str, request_id: str, bound: float = BOUND) -> str:
    """CreateProduct with one request_id, retried while the catalog is away (the same product)."""
    catalog_pb2, _ = system.pb["catalog"]
    money = system.pb["money"].Money(currency_code="EUR", amount_minor=1990)
    request = catalog_pb2.CreateProductRequest(
        request_id=request_id, product=catalog_pb2.Product(display_name="Lamp", family_id=family_id, price=money))
    deadline = time.monotonic() + bound
    while True:
        try:
            return system.stub("catalog").CreateProduct(request, timeout=5).product.product_id
        except grpc.RpcError as err:
            assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), err
            assert time.monotonic() < deadline, f"CreateProduct failed for {bound} s: {err}"
            time.sleep(0.05)


def offer_on(system: Backbone, product_id: str, target: str | None = None) -> str:
    offers_pb2, _ = system.pb["offers"]
    offer = offers_pb2.Offer(product_id=product_id, kind=offers_pb2.OFFER_KIND_SPEED, discount_percent=10,
                             start_time=timestamp(-60), end_time=timestamp(3600))
    return system.stub("offers", target).CreateOffer(offers_pb2.CreateOfferRequest(offer=offer), timeout=10).offer.offer_id


def discontinue(system: Backbone, product_id: str) -> None:
    catalog_pb2, _ = system.pb["catalog"]
    system.stub("catalog").DiscontinueProduct(catalog_pb2.DiscontinueProductRequest(product_id=product_id), timeout=10)


def test_a_relay_killed_mid_batch_publishes_every_event_once_in_order(backbone):
    system = backbone
    system.catalog.start()
    family_id = family(system)
    created, errors = [], []
    lock = threading.Lock()

    def writer():
        try:
            while not load.stop.is_set():
                product = create_product(system, family_id, str(uuid.uuid4()))
                with lock:
                    created.append(product)
        except Exception as err:  # reported by the test, not lost in the thread
            errors.append(err)

    load = Workers(writer, writer, writer, writer)
    with load:
        rng = random.Random(27)
        for _ in range(5):
            eventually(lambda: not errors and len(created) > 20 or errors, "writes under way")
            assert not errors, errors
            time.sleep(rng.uniform(0.2, 0.6))
            system.catalog.kill()
            system.catalog.start()
    assert not errors, errors
    assert len(created) > 100, f"only {len(created)} products were written"
    system.assert_stream_is_the_outbox()
    stream = system.nats.stream("AGORA_CATALOG")
    assert len(stream) >= len(created)
    print(f"{len(created)} products written across 5 kills of the relaying catalog; {len(stream)} events in the "
          "stream, each once, in order")


def test_offers_replicas_killed_while_applying_apply_every_event_once(backbone):
    system = backbone
    system.customers.start()
    system.catalog.start()
    offers = [system.add_offers(ip) for ip in ("127.0.0.2", "127.0.0.3")]
    for replica in offers:
        replica.start()
    family_id = family(system)
    products = [create_product(system, family_id, str(uuid.uuid4())) for _ in range(60)]
    for product in products:
        offer_on(system, product, offers[0].addr)
    rng = random.Random(28)
    burst = threading.Thread(target=lambda: [discontinue(system, p) for p in products], daemon=True)
    burst.start()
    for round_ in range(4):
        victim = offers[round_ % 2]
        time.sleep(rng.uniform(0.1, 0.4))
        victim.kill()
        victim.start()
    burst.join(timeout=BOUND)
    eventually(system.caught_up, "every partition's cursor at its last event")
    system.assert_applied_once_in_order()
    offers_pb2, _ = system.pb["offers"]
    stub = system.stub("offers", offers[0].addr)
    for product in products:
        listed = stub.ListOffers(offers_pb2.ListOffersRequest(product_id=product, page_size=10), timeout=10).offers
        assert [o.state for o in listed] == [offers_pb2.OFFER_STATE_WITHDRAWN], product
        assert listed[0].etag == "r2", f"an offer of {product} was withdrawn more than once"


def test_nats_down_for_ten_seconds_under_writes(backbone):
    system = backbone
    system.customers.start()
    system.catalog.start()
    replica = system.add_offers("127.0.0.2").start()
    family_id = family(system)
    products = [create_product(system, family_id, str(uuid.uuid4())) for _ in range(30)]
    for product in products:
        offer_on(system, product, replica.addr)
    system.nats.kill()
    started = time.monotonic()
    written = []
    # Writes go on while NATS is away: the outbox keeps their events.
    for product in products:
        discontinue(system, product)
    while time.monotonic() - started < 10:
        written.append(create_product(system, family_id, str(uuid.uuid4()), bound=1.0))
    assert (system.relay_lag() or 0) > 0, "the relay's lag does not show the events waiting"
    system.nats.start()
    back = time.monotonic()
    system.assert_stream_is_the_outbox()
    relayed = time.monotonic() - back
    eventually(system.caught_up, "offers caught up")
    print(f"{len(written) + len(products)} writes while NATS was down; relayed {relayed:.1f} s and applied "
          f"{time.monotonic() - back:.1f} s after it was back")
    system.assert_applied_once_in_order()
    applied = Counter(s for _, _, s in system.applied())
    assert sorted(applied) == [s for s, _ in system.outbox()], "not every event was applied"
    offers_pb2, _ = system.pb["offers"]
    stub = system.stub("offers", replica.addr)
    for product in products:
        listed = stub.ListOffers(offers_pb2.ListOffersRequest(product_id=product, page_size=10), timeout=10).offers
        assert [(o.state, o.etag) for o in listed] == [(offers_pb2.OFFER_STATE_WITHDRAWN, "r2")], product
    assert len(written) > 10


def test_three_replicas_share_eight_partitions_and_take_over_within_two_seconds(backbone):
    system = backbone
    system.customers.start()
    system.catalog.start()
    replicas = [system.add_offers(ip).start() for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")]

    def owners(alive: list) -> dict:
        found = defaultdict(list)
        for i, replica in enumerate(alive):
            for p in range(PARTITIONS):
                if replica.metric("agora_events_partition_owned", f'feed="catalog",partition="{p}"') == 1:
                    found[p].append(i)
        assert all(len(o) <= 1 for o in found.values()), f"a partition applied by two replicas: {dict(found)}"
        return found

    def shared(alive: list, shares: list) -> bool:
        found = owners(alive)
        return len(found) == PARTITIONS and sorted(Counter(o[0] for o in found.values()).values()) == shares

    eventually(lambda: shared(replicas, [2, 3, 3]), "8 partitions shared 3, 3, 2")
    family_id = family(system)
    products = [create_product(system, family_id, str(uuid.uuid4())) for _ in range(40)]
    for product in products:
        offer_on(system, product, replicas[1].addr)
    burst = threading.Thread(target=lambda: [discontinue(system, p) for p in products], daemon=True)
    burst.start()
    victim = replicas.pop(0)
    victim.kill()
    killed = time.monotonic()
    eventually(lambda: shared(replicas, [4, 4]), "the killed replica's partitions taken over", TAKEOVER_BOUND + 1)
    took = time.monotonic() - killed
    print(f"partitions taken over {took:.2f} s after the kill")
    assert took < TAKEOVER_BOUND, f"taken over after {took:.2f} s"
    burst.join(timeout=BOUND)
    eventually(system.caught_up, "every partition's cursor at its last event")
    for _ in range(20):
        owners(replicas)
    system.assert_applied_once_in_order()
