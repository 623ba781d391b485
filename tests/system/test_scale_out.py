"""Agora scaled out on PostgreSQL, as Kubernetes runs it, with real
processes: three replicas of catalog and of offers, each on a loopback
address of its own (127.0.0.2 to 127.0.0.4), one database per context that
its replicas share, everything over TLS with mTLS between services.

Offers finds the catalog's replicas by one name, `catalog`, which the
system resolver answers with every replica's address, as a headless
Service's DNS answers with every ready pod: each offers replica runs in a
mount namespace of its own with a hosts file mounted over /etc/hosts, and
the test edits that file as pods would come and go.

Under a steady load of the story's calls, replicas are killed (SIGKILL),
restarted, and drained (SIGTERM). Every call is idempotent (reads, creates
with a request_id), so none may fail; every acknowledged write must be
there at the end; at most one offers replica leads the catalog feed at any
time; the feed catches up; and a feed whose serving catalog replica is
killed is followed again within TAKEOVER_BOUND, round after round.

Run by `make test-system`; needs root (for the mount namespace) and the
PostgreSQL of AGORA_TEST_POSTGRES_URL."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
from agora_local import Credentials, Replica, Workers, free_port, generated_client, psql, server_url  # noqa: E402,E501

# Offers follows the catalog's feed again within this bound after the
# catalog replica serving it is killed.
TAKEOVER_BOUND = 2.0
# The feed has caught up within this bound once the load stops.
CATCH_UP_BOUND = 15.0
REPLICA_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
KILL_ROUNDS = 5


def can_mount_hosts() -> bool:
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount --bind /etc/hosts /etc/hosts"], capture_output=True, timeout=10
    )
    return probe.returncode == 0


def retrying_options(name: str) -> list:
    """A client as gRPC users configure one for a replicated service: every address, round robin,
    UNAVAILABLE retried with backoff (the calls are idempotent), the certificate checked for `name`."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{
            "name": [{}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }],
    }
    return [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1),
            ("grpc.ssl_target_name_override", name)]


class Scaled:
    """The system: customers once, catalog and offers three times each."""

    def __init__(self, work: Path, pb: dict):
        self.work, self.pb = work, pb
        self.credentials = Credentials(work)
        self.logs = work / "logs"
        self.logs.mkdir()
        self.hosts = work / "hosts"
        self.write_hosts(REPLICA_IPS)
        tag = f"agora_sys_{os.getpid()}"
        self.databases = {s: f"{tag}_{s}" for s in ("catalog", "customers", "offers")}
        for database in self.databases.values():
            psql("postgres", f"CREATE DATABASE {database}")
        ports = {s: free_port() for s in ("catalog", "customers", "offers")}
        common = dict(
            AGORA_DRAIN_DELAY_MS="300",
            AGORA_OUTBOX_POLL_MS="100",
            AGORA_UPSTREAM_RESOLVE_MS="500",
            AGORA_LOG="info",
        )

        def env(service: str) -> dict:
            return dict(os.environ, **self.credentials.env(service), **common,
                        AGORA_DATABASE_URL=server_url(self.databases[service]),
                        AGORA_CATALOG_ADDRS=f"https://catalog:{ports['catalog']}",
                        AGORA_CUSTOMERS_ADDRS=f"https://127.0.0.1:{ports['customers']}")

        self.customers = Replica("customers", "127.0.0.1", ports["customers"], env("customers"), None, self.logs)
        self.catalog = [Replica("catalog", ip, ports["catalog"], env("catalog"), None, self.logs) for ip in REPLICA_IPS]
        self.offers = [Replica("offers", ip, ports["offers"], env("offers"), self.hosts, self.logs)
                       for ip in REPLICA_IPS]
        self.targets = {s: "ipv4:" + ",".join(f"{ip}:{ports[s]}" for ip in REPLICA_IPS) for s in ("catalog", "offers")}
        self.staff = self.credentials.token("staff")

    def write_hosts(self, ips: list) -> None:
        """The name `catalog` resolves to `ips`. Written in place: the file stays the one mounted."""
        with open(self.hosts, "w") as f:
            f.write("127.0.0.1 localhost\n" + "".join(f"{ip} catalog\n" for ip in ips))

    def start(self) -> None:
        for replica in [self.customers, *self.catalog, *self.offers]:
            replica.start()

    def stop(self) -> None:
        for replica in [self.customers, *self.catalog, *self.offers]:
            if replica.alive():
                replica.process.send_signal(signal.SIGTERM)
        for replica in [self.customers, *self.catalog, *self.offers]:
            if replica.process:
                try:
                    replica.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    replica.process.kill()
        for database in self.databases.values():
            psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def stub(self, service: str):
        _, module = self.pb[service]
        name = {"catalog": "CatalogServiceStub", "offers": "OfferServiceStub",
                "customers": "CustomerServiceStub"}[service]
        target = self.targets.get(service, self.customers.addr)
        channel = self.credentials.channel_to(target, self.staff, retrying_options(service))
        return getattr(module, name)(channel)

    def catalog_head(self) -> int:
        return int(psql(self.databases["catalog"], "SELECT COALESCE(MAX(sequence), 0) FROM outbox_events"))

    def offers_cursor(self) -> int:
        found = psql(self.databases["offers"], "SELECT sequence FROM feed_cursors WHERE feed = 'catalog'")
        return int(found or 0)

    def caught_up(self, bound: float) -> bool:
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if self.offers_cursor() >= self.catalog_head():
                return True
            time.sleep(0.05)
        return False


def timestamp(seconds_from_now: int) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(time.time()) + seconds_from_now)
    return ts


@pytest.fixture(scope="module")
def scaled():
    if os.geteuid() != 0 or not can_mount_hosts():
        pytest.fail("the scale-out suite needs root, for a mount namespace with its own /etc/hosts")
    assert shutil.which("psql"), "the scale-out suite needs psql (postgresql-client)"
    work = Path(tempfile.mkdtemp(prefix="agora-scale-"))
    system = Scaled(work, generated_client())
    try:
        system.start()
        yield system
    finally:
        system.stop()
        print(f"logs of the scale-out suite: {system.logs}")


class Load(Workers):
    """The story's calls, steadily, from four client threads; every outcome recorded."""

    def __init__(self, system: Scaled, family_id: str, products: list):
        self.system, self.family_id = system, family_id
        self.products = list(products)
        self.created_products: list = []
        self.created_offers: list = []
        self.ok = 0
        self.failures: list = []
        self.leaders_seen = 0
        self.lock = threading.Lock()
        super().__init__(self.get_products, self.list_offers, self.create_products, self.create_offers,
                         self.watch_leaders, join_bound=30)

    def call(self, what: str, fn):
        try:
            answer = fn()
            with self.lock:
                self.ok += 1
            return answer
        except grpc.RpcError as err:
            with self.lock:
                self.failures.append(f"{what}: {err.code().name}: {err.details()}")
            return None

    def loop(self, what: str, fn) -> None:
        while not self.stop.is_set():
            self.call(what, fn)
            time.sleep(0.01)

    def get_products(self) -> None:
        catalog_pb2, _ = self.system.pb["catalog"]
        stub = self.system.stub("catalog")
        self.loop("GetProduct", lambda: stub.GetProduct(
            catalog_pb2.GetProductRequest(product_id=random.choice(self.products)), timeout=10))

    def list_offers(self) -> None:
        offers_pb2, _ = self.system.pb["offers"]
        stub = self.system.stub("offers")
        self.loop("ListAvailableOffers", lambda: stub.ListAvailableOffers(
            offers_pb2.ListAvailableOffersRequest(product_id=random.choice(self.products)), timeout=10))

    def create_products(self) -> None:
        catalog_pb2, _ = self.system.pb["catalog"]
        money = self.system.pb["money"]
        stub = self.system.stub("catalog")
        while not self.stop.is_set():
            request = catalog_pb2.CreateProductRequest(
                request_id=str(uuid.uuid4()),
                product=catalog_pb2.Product(display_name="Lamp", family_id=self.family_id,
                                            price=money.Money(currency_code="EUR", amount_minor=1990)))
            answer = self.call("CreateProduct", lambda: stub.CreateProduct(request, timeout=10))
            if answer:
                with self.lock:
                    self.created_products.append(answer.product.product_id)
            time.sleep(0.01)

    def create_offers(self) -> None:
        offers_pb2, _ = self.system.pb["offers"]
        stub = self.system.stub("offers")
        while not self.stop.is_set():
            request = offers_pb2.CreateOfferRequest(
                request_id=str(uuid.uuid4()),
                offer=offers_pb2.Offer(product_id=random.choice(self.products), kind=offers_pb2.OFFER_KIND_SPEED,
                                       discount_percent=10, start_time=timestamp(-60), end_time=timestamp(3600)))
            answer = self.call("CreateOffer", lambda: stub.CreateOffer(request, timeout=10))
            if answer:
                with self.lock:
                    self.created_offers.append(answer.offer.offer_id)
            time.sleep(0.01)

    def watch_leaders(self) -> None:
        """How many offers replicas lead the catalog feed at once, at most. Replicas are read one
        after the other, so a hand-over between two reads can look like two leaders: those seen
        leading are read again, in the other order, and count together only if each still leads
        after the others were seen leading (a replica shows 0 before it lets the lock go)."""
        def leads(r: Replica) -> bool:
            return r.alive() and r.metric("agora_feed_leader", 'feed="catalog"') == 1.0

        while not self.stop.is_set():
            leading = [r for r in self.system.offers if leads(r)]
            if len(leading) > 1:
                leading = [r for r in reversed(leading) if leads(r)]
            self.leaders_seen = max(self.leaders_seen, len(leading))
            time.sleep(0.1)


def seed(system: Scaled, count: int) -> tuple:
    catalog_pb2, _ = system.pb["catalog"]
    money = system.pb["money"]
    catalog = system.stub("catalog")
    family = catalog.CreateFamily(catalog_pb2.CreateFamilyRequest(
        family=catalog_pb2.Family(display_name="Lamps")), timeout=10).family
    products = [catalog.CreateProduct(catalog_pb2.CreateProductRequest(
        request_id=str(uuid.uuid4()),
        product=catalog_pb2.Product(display_name=f"Lamp {i}", family_id=family.family_id,
                                    price=money.Money(currency_code="EUR", amount_minor=1000 + i))),
        timeout=10).product.product_id for i in range(count)]
    return family.family_id, products


def first_alive(replicas: list, condition, what: str, bound: float = 10) -> Replica:
    """The first live replica for which `condition` holds, waited for within `bound` seconds."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        for replica in replicas:
            if replica.alive() and condition(replica):
                return replica
        time.sleep(0.05)
    raise AssertionError(f"no {what}")


def serving_the_feed(system: Scaled) -> Replica:
    """The catalog replica whose Watch stream offers follows."""
    return first_alive(system.catalog, lambda r: (r.metric("agora_outbox_watchers") or 0) >= 1,
                       "catalog replica serves the feed")


def leading(system: Scaled) -> Replica:
    """The offers replica that leads the catalog feed."""
    return first_alive(system.offers, lambda r: r.metric("agora_feed_leader", 'feed="catalog"') == 1.0,
                       "offers replica leads the catalog feed")


def test_kills_restarts_and_drains_fail_no_call_and_lose_no_write(scaled):
    system = scaled
    catalog_pb2, _ = system.pb["catalog"]
    offers_pb2, _ = system.pb["offers"]
    family_id, products = seed(system, 20)
    with Load(system, family_id, products) as load:
        time.sleep(2)  # load before the first disruption, so calls are on their way when it comes
        killed = [serving_the_feed(system), leading(system)]
        for replica in killed:
            replica.kill()
        time.sleep(1)  # calls meet the dead replicas meanwhile
        for replica in killed:
            replica.start()
        time.sleep(1)
        drained = [r for r in system.catalog if r is not killed[0]][0], [r for r in system.offers
                                                                          if r is not killed[1]][0]
        for replica in drained:
            assert replica.drain() == 0, f"{replica.addr} did not exit cleanly on SIGTERM"
        time.sleep(1)
        for replica in drained:
            replica.start()
        time.sleep(1)
    print(f"calls: {load.ok} answered, {len(load.failures)} failed; "
          f"{len(load.created_products)} products and {len(load.created_offers)} offers created")
    assert load.ok > 200, "too little load to show anything"
    assert not load.failures, load.failures[:20]
    assert load.leaders_seen == 1, f"{load.leaders_seen} offers replicas led the catalog feed at once"

    # Every acknowledged write is there.
    catalog, offers = system.stub("catalog"), system.stub("offers")
    for product_id in load.created_products:
        got = catalog.GetProduct(catalog_pb2.GetProductRequest(product_id=product_id), timeout=10).product
        assert got.product_id == product_id
    for offer_id in load.created_offers:
        assert offers.GetOffer(offers_pb2.GetOfferRequest(offer_id=offer_id), timeout=10).offer.offer_id == offer_id
    stored = int(psql(system.databases["catalog"], "SELECT COUNT(*) FROM products"))
    assert stored == len(products) + len(load.created_products), "a product no call acknowledged, or one lost"

    # The feed catches up, and a discontinued product's offers are withdrawn exactly once.
    assert system.caught_up(CATCH_UP_BOUND), "the catalog feed did not catch up"
    target = products[0]
    catalog.DiscontinueProduct(catalog_pb2.DiscontinueProductRequest(product_id=target), timeout=10)
    assert system.caught_up(CATCH_UP_BOUND), "the discontinuation was not applied"
    states = psql(system.databases["offers"], f"SELECT DISTINCT state FROM offers WHERE product_id = '{target}'")
    assert states == "WITHDRAWN", f"offers of a discontinued product in states {states!r}"


def test_the_feed_is_followed_again_within_the_bound_each_time_its_replica_is_killed(scaled):
    system = scaled
    catalog_pb2, _ = system.pb["catalog"]
    family_id, _ = seed(system, 1)
    catalog = system.stub("catalog")
    money = system.pb["money"]
    assert system.caught_up(CATCH_UP_BOUND)
    takeovers = []
    for _ in range(KILL_ROUNDS):
        victim = serving_the_feed(system)
        victim.kill()
        killed_at = time.monotonic()
        catalog.CreateProduct(catalog_pb2.CreateProductRequest(
            request_id=str(uuid.uuid4()),
            product=catalog_pb2.Product(display_name="Lamp", family_id=family_id,
                                        price=money.Money(currency_code="EUR", amount_minor=990))), timeout=10)
        assert system.caught_up(CATCH_UP_BOUND), "offers did not follow the feed again"
        takeovers.append(time.monotonic() - killed_at)
        victim.start()
    print("feed takeover after a kill, seconds: " + ", ".join(f"{t:.2f}" for t in takeovers))
    assert max(takeovers) < TAKEOVER_BOUND, f"takeovers {takeovers}: over {TAKEOVER_BOUND} s"


def test_replicas_behind_the_name_join_and_leave_as_it_changes(scaled):
    """Offers balances its calls to the catalog over every address `catalog` resolves to, and
    follows the name as it changes (re-resolved every AGORA_UPSTREAM_RESOLVE_MS). The offers are
    asked for products nobody has: offers keeps the products the catalog's feed brings and asks the
    catalog only for one it has not heard of, and keeps nothing of an unknown one, so each of these
    calls asks the catalog (which answers NOT_FOUND)."""
    system = scaled
    offers_pb2, _ = system.pb["offers"]
    offers = system.stub("offers")

    def served_by_catalog() -> list:
        return [r.metric("grpc_server_handled_total", 'grpc_service="agora.catalog.v1.CatalogService",'
                         'grpc_method="GetProduct",grpc_code="NOT_FOUND"') or 0 for r in system.catalog]

    def resolved_to(n: int) -> None:
        """Waits until every offers replica balances over `n` catalog replicas."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(r.metric("agora_upstream_replicas", 'upstream="catalog"') == n for r in system.offers):
                return
            time.sleep(0.05)
        raise AssertionError(f"offers did not follow the name to {n} replicas")

    def create_offers(n: int) -> list:
        before = served_by_catalog()
        for i in range(n):
            try:
                offers.CreateOffer(offers_pb2.CreateOfferRequest(request_id=str(uuid.uuid4()), offer=offers_pb2.Offer(
                    product_id=f"prd_nowhere_{i}", kind=offers_pb2.OFFER_KIND_SPEED, discount_percent=5,
                    start_time=timestamp(-60), end_time=timestamp(3600))), timeout=10)
                raise AssertionError("an offer on a product nobody has was created")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
        return [after - b for after, b in zip(served_by_catalog(), before)]

    spread = create_offers(60)
    assert all(n > 0 for n in spread), f"calls reached only some catalog replicas: {spread}"
    resolved_to(3)
    system.write_hosts(REPLICA_IPS[:1])
    resolved_to(1)
    spread = create_offers(30)
    assert spread[1] == 0 and spread[2] == 0 and spread[0] > 0, f"removed replicas still called: {spread}"
    system.write_hosts(REPLICA_IPS)
    resolved_to(3)
    spread = create_offers(60)
    assert all(n > 0 for n in spread), f"replicas back behind the name got no calls: {spread}"
