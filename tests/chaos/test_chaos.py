"""The seeded chaos run (`make test-chaos`; `make test-chaos SEED=<n>` replays one).

The four services on PostgreSQL, two replicas of catalog and of offers (on 127.0.0.2 and 127.0.0.3,
offers balancing over both catalogs), every service's database reached through a fault proxy of its
own (`agora-fault-proxy`), everything over TLS with mTLS between services and a token on every call.
Clients make the story's calls as load: staff create products (with a request_id, retried with the
same one), discontinue some, register and delete customers, make offers for everyone and personal
ones; customers make shopping lists and add items; readers get products and the offers available.
Some customers are deleted, and some products discontinued, in the middle of a burst of creates that
name them.

Meanwhile a schedule of faults drawn from the seed: replicas killed (SIGKILL, then restarted) and
stalled (SIGSTOP, then SIGCONT), a database's connections reset and refused, or black-holed, and the
single-replica upstreams (customers) and shopping stalled. Faults overlap.

At the end, with every fault undone and the load stopped, the invariants, from the databases and
the APIs:
- every acknowledged write is there (products, customers not deleted, offers, lists of customers not
  deleted, items);
- every request_id created one resource (the answers to its retries name one; the database holds one
  per key);
- no active offer of a discontinued product, no active personal offer of a deleted customer, no
  shopping list of a deleted customer, no available item of a discontinued product;
- every feed's cursor at its upstream's head, each event applied once (no two "feed event applied"
  lines for one event in the logs of a consumer's replicas);
- no client saw INTERNAL or UNKNOWN, no process panicked, and no pooled connection was handed on
  inside a transaction (PostgreSQL's notice, in the logs).

A failure prints the seed and the schedule. Needs psql and the PostgreSQL of
AGORA_TEST_POSTGRES_URL; no root."""

import json
import os
import random
import signal
import subprocess
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
from agora_local import (BIN_DIR, POSTGRES, Credentials, Replica, Workers, free_port,  # noqa: E402
                         generated_client, psql, server_url, wait_serving)

SEED = int(os.environ.get("SEED") or random.SystemRandom().randrange(1, 2**31))
# How long the load runs with faults; then recovery and the checks.
LOAD_SECONDS = float(os.environ.get("CHAOS_SECONDS", "75"))
# Everything back to health and every feed at its head within this, once the faults end.
RECOVERY_BOUND = 90.0
CALL_TIMEOUT = 3.0
# Codes a client may see during faults and retries; anything else but OK, the caller's own mistakes
# named in `EXPECTED`, is a finding.
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.CANCELLED}
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
         grpc.StatusCode.UNIMPLEMENTED}
REPLICA_IPS = ["127.0.0.2", "127.0.0.3"]
SERVICES = ["catalog", "customers", "offers", "shopping"]


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def timestamp(seconds_from_now: int) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(time.time()) + seconds_from_now)
    return ts


class FaultProxy:
    """An `agora-fault-proxy` process between one service and PostgreSQL; `set` switches its fault."""

    def __init__(self, name: str, target: str, logs: Path):
        self.name = name
        self.process = subprocess.Popen(
            [str(BIN_DIR / "agora-fault-proxy"), "--listen", f"127.0.0.1:{free_port()}", "--target", target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(logs / f"proxy-{name}.log", "w"), text=True)
        line = self.process.stdout.readline().split()
        assert line[:1] == ["listening"], f"the fault proxy said {line}"
        self.addr = line[1]
        self.lock = threading.Lock()

    def set(self, fault: str) -> None:
        with self.lock:
            self.process.stdin.write(fault + "\n")
            self.process.stdin.flush()
            assert self.process.stdout.readline().split() == ["fault", fault]

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)


class System:
    """The services as processes on PostgreSQL, each database behind a fault proxy."""

    def __init__(self, work: Path, pb: dict):
        self.work, self.pb = work, pb
        self.credentials = Credentials(work)
        self.logs = work / "logs"
        self.logs.mkdir()
        tag = f"agora_chaos_{os.getpid()}"
        self.databases = {s: f"{tag}_{s}" for s in SERVICES}
        for database in self.databases.values():
            psql("postgres", f"CREATE DATABASE {database}")
        host_port = POSTGRES.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        self.proxies = {s: FaultProxy(s, host_port, self.logs) for s in SERVICES}
        ports = {s: free_port() for s in SERVICES}
        common = dict(AGORA_DRAIN_DELAY_MS="200", AGORA_OUTBOX_POLL_MS="100", AGORA_LOG_FORMAT="text",
                      AGORA_LOG="info,agora_platform::feed=debug", AGORA_DB_MAX_CONNECTIONS="4")

        def database_url(service: str) -> str:
            url = server_url(self.databases[service])
            return url.replace(host_port, self.proxies[service].addr, 1)

        def env(service: str) -> dict:
            return dict(os.environ, **self.credentials.env(service), **common,
                        AGORA_DATABASE_URL=database_url(service),
                        AGORA_CATALOG_ADDRS=",".join(f"https://{ip}:{ports['catalog']}" for ip in REPLICA_IPS),
                        AGORA_CUSTOMERS_ADDRS=f"https://127.0.0.1:{ports['customers']}")

        self.replicas = {
            "catalog": [Replica("catalog", ip, ports["catalog"], env("catalog"), None, self.logs) for ip in REPLICA_IPS],
            "offers": [Replica("offers", ip, ports["offers"], env("offers"), None, self.logs) for ip in REPLICA_IPS],
            "customers": [Replica("customers", "127.0.0.1", ports["customers"], env("customers"), None, self.logs)],
            "shopping": [Replica("shopping", "127.0.0.1", ports["shopping"], env("shopping"), None, self.logs)],
        }
        self.targets = {s: "ipv4:" + ",".join(r.addr for r in rs) for s, rs in self.replicas.items()}
        self.staff = self.credentials.token("staff")
        self.tokens: dict[str, str] = {}
        self.stubs: dict[tuple, object] = {}
        self.lock = threading.Lock()

    def all(self) -> list:
        return [r for rs in self.replicas.values() for r in rs]

    def start(self) -> None:
        for service in ["customers", "catalog", "offers", "shopping"]:
            for replica in self.replicas[service]:
                replica.start()

    def stop(self) -> None:
        for replica in self.all():
            if replica.alive():
                replica.resume()
                replica.process.send_signal(signal.SIGTERM)
        for replica in self.all():
            if replica.process:
                try:
                    replica.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    replica.process.kill()
        for proxy in self.proxies.values():
            proxy.stop()
        for database in self.databases.values():
            psql("postgres", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")

    def token_of(self, customer_id: str) -> str:
        with self.lock:
            token = self.tokens.get(customer_id)
        if token is None:
            token = self.credentials.token("customer", customer_id)
            with self.lock:
                self.tokens[customer_id] = token
        return token

    def channel(self, service: str, token: str) -> grpc.Channel:
        """A channel as gRPC users configure one for a replicated service: every replica, round robin;
        the certificate checked for the service's name."""
        options = [("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
                   ("grpc.ssl_target_name_override", service)]
        return self.credentials.channel_to(self.targets[service], token, options)

    def stub(self, service: str, token: str | None = None):
        """A client of `service` calling with `token` (staff's by default), one channel each."""
        key = (service, token or self.staff)
        with self.lock:
            stub = self.stubs.get(key)
        if stub is None:
            _, module = self.pb[service]
            name = {"catalog": "CatalogServiceStub", "offers": "OfferServiceStub",
                    "customers": "CustomerServiceStub", "shopping": "ShoppingListServiceStub"}[service]
            stub = getattr(module, name)(self.channel(service, key[1]))
            with self.lock:
                self.stubs.setdefault(key, stub)
        return stub

    def query(self, service: str, sql: str) -> list:
        """Rows of `sql` on a service's database, read directly (not through its proxy)."""
        out = psql(self.databases[service], sql)
        return [line.split("|") for line in out.splitlines() if line]


class Ledger:
    """What the clients were told: every acknowledged write, every request_id's answers, every code."""

    def __init__(self):
        self.lock = threading.Lock()
        self.codes: Counter = Counter()
        self.findings: list[str] = []
        self.products: list[str] = []
        self.discontinued: set[str] = set()
        self.customers: list[str] = []
        self.deleted: set[str] = set()
        # Deletions asked for, answered or not: the customer may be gone.
        self.deleting: set[str] = set()
        self.offers: dict[str, tuple] = {}
        self.lists: dict[str, str] = {}
        self.items: set[tuple] = set()
        self.answers: dict[str, set] = defaultdict(set)

    def heard(self, what: str, code: grpc.StatusCode, details: str = "") -> None:
        with self.lock:
            self.codes[(what, code.name)] += 1
            if code in NEVER:
                self.findings.append(f"{what}: {code.name}: {details}")

    def call(self, what: str, fn, expected=(), attempts: int = 8):
        """`fn()` until it answers, retrying what a client retries (with backoff, bounded); returns the
        answer, or the code it ended with (an expected refusal, or the last retried failure)."""
        backoff = 0.05
        for attempt in range(attempts):
            try:
                answer = fn()
                self.heard(what, grpc.StatusCode.OK)
                return answer
            except grpc.RpcError as err:
                code = err.code()
                self.heard(what, code, err.details() or "")
                if code not in RETRIED or attempt == attempts - 1:
                    if code not in RETRIED and code not in expected and code not in NEVER:
                        with self.lock:
                            self.findings.append(f"{what}: unexpected {code.name}: {err.details()}")
                    return code
                time.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 1.0)
        return None


class Load(Workers):
    """The story's calls from several client threads until stopped."""

    def __init__(self, system: System, ledger: Ledger, family_id: str, rng: random.Random):
        self.system, self.ledger, self.family_id = system, ledger, family_id
        self.rng_lock = threading.Lock()
        self.rng = rng
        super().__init__(self.create_products, self.customers, self.create_offers, self.create_offers,
                         self.shop, self.shop, self.read, self.bursts)

    def choice(self, items):
        with self.ledger.lock:
            items = list(items)
        with self.rng_lock:
            return self.rng.choice(items) if items else None

    def random(self) -> float:
        with self.rng_lock:
            return self.rng.random()

    def pace(self) -> None:
        time.sleep(0.02)

    # ---- staff

    def create_product(self, stub) -> str | None:
        catalog_pb2, _ = self.system.pb["catalog"]
        money = self.system.pb["money"]
        request = catalog_pb2.CreateProductRequest(
            request_id=str(uuid.uuid4()),
            product=catalog_pb2.Product(display_name="Lamp", family_id=self.family_id,
                                        price=money.Money(currency_code="EUR", amount_minor=1990)))
        answer = self.ledger.call("CreateProduct", lambda: stub.CreateProduct(request, timeout=CALL_TIMEOUT))
        if isinstance(answer, catalog_pb2.CreateProductResponse):
            with self.ledger.lock:
                self.ledger.answers[request.request_id].add(answer.product.product_id)
                self.ledger.products.append(answer.product.product_id)
            return answer.product.product_id
        return None

    def discontinue(self, stub, product_id: str) -> None:
        catalog_pb2, _ = self.system.pb["catalog"]
        request = catalog_pb2.DiscontinueProductRequest(product_id=product_id)
        answer = self.ledger.call("DiscontinueProduct", lambda: stub.DiscontinueProduct(request, timeout=CALL_TIMEOUT))
        if isinstance(answer, catalog_pb2.DiscontinueProductResponse):
            with self.ledger.lock:
                self.ledger.discontinued.add(product_id)

    def create_products(self) -> None:
        stub = self.system.stub("catalog")
        while not self.stop.is_set():
            self.create_product(stub)
            if self.random() < 0.08:
                product = self.choice(self.ledger.products)
                if product:
                    self.discontinue(stub, product)
            self.pace()

    def create_customer(self, stub) -> str | None:
        customers_pb2, _ = self.system.pb["customers"]
        request = customers_pb2.CreateCustomerRequest(customer=customers_pb2.Customer(
            given_name="Ada", family_name="Lovelace", email=f"ada.{uuid.uuid4().hex}@example.com"))
        answer = self.ledger.call("CreateCustomer", lambda: stub.CreateCustomer(request, timeout=CALL_TIMEOUT),
                                  expected=(grpc.StatusCode.ALREADY_EXISTS,))
        if isinstance(answer, customers_pb2.CreateCustomerResponse):
            with self.ledger.lock:
                self.ledger.customers.append(answer.customer.customer_id)
            return answer.customer.customer_id
        return None

    def delete_customer(self, stub, customer_id: str) -> None:
        customers_pb2, _ = self.system.pb["customers"]
        request = customers_pb2.DeleteCustomerRequest(customer_id=customer_id)
        with self.ledger.lock:
            self.ledger.deleting.add(customer_id)
        answer = self.ledger.call("DeleteCustomer", lambda: stub.DeleteCustomer(request, timeout=CALL_TIMEOUT),
                                  expected=(grpc.StatusCode.NOT_FOUND,))
        # NOT_FOUND after a retry: the first attempt deleted it.
        if isinstance(answer, customers_pb2.DeleteCustomerResponse) or answer == grpc.StatusCode.NOT_FOUND:
            with self.ledger.lock:
                self.ledger.deleted.add(customer_id)

    def customers(self) -> None:
        stub = self.system.stub("customers")
        while not self.stop.is_set():
            self.create_customer(stub)
            if self.random() < 0.1:
                customer = self.choice(c for c in self.ledger.customers if c not in self.ledger.deleted)
                if customer:
                    self.delete_customer(stub, customer)
            time.sleep(0.05)

    def create_offer(self, stub, product_id: str, customer_id: str) -> None:
        offers_pb2, _ = self.system.pb["offers"]
        request = offers_pb2.CreateOfferRequest(request_id=str(uuid.uuid4()), offer=offers_pb2.Offer(
            product_id=product_id, customer_id=customer_id, kind=offers_pb2.OFFER_KIND_SPEED,
            discount_percent=10, start_time=timestamp(-60), end_time=timestamp(3600)))
        answer = self.ledger.call(
            "CreateOffer", lambda: stub.CreateOffer(request, timeout=CALL_TIMEOUT),
            # The product discontinued, or the customer deleted, before the offer: refused.
            expected=(grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND))
        if isinstance(answer, offers_pb2.CreateOfferResponse):
            with self.ledger.lock:
                self.ledger.answers[request.request_id].add(answer.offer.offer_id)
                self.ledger.offers[answer.offer.offer_id] = (product_id, customer_id)

    def create_offers(self) -> None:
        stub = self.system.stub("offers")
        while not self.stop.is_set():
            product = self.choice(self.ledger.products)
            customer = self.choice(self.ledger.customers) if self.random() < 0.5 else ""
            if product is not None and customer is not None:
                self.create_offer(stub, product, customer)
            self.pace()

    # ---- customers

    def create_list(self, customer_id: str) -> str | None:
        shopping_pb2, _ = self.system.pb["shopping"]
        stub = self.system.stub("shopping", self.system.token_of(customer_id))
        request = shopping_pb2.CreateShoppingListRequest(
            shopping_list=shopping_pb2.ShoppingList(customer_id=customer_id, title="Week"))
        answer = self.ledger.call("CreateShoppingList", lambda: stub.CreateShoppingList(request, timeout=CALL_TIMEOUT),
                                  expected=(grpc.StatusCode.NOT_FOUND,))
        if isinstance(answer, shopping_pb2.CreateShoppingListResponse):
            with self.ledger.lock:
                self.ledger.lists[answer.shopping_list.list_id] = customer_id
            return answer.shopping_list.list_id
        return None

    def add_item(self, list_id: str, customer_id: str, product_id: str) -> None:
        shopping_pb2, _ = self.system.pb["shopping"]
        stub = self.system.stub("shopping", self.system.token_of(customer_id))
        request = shopping_pb2.AddItemRequest(list_id=list_id, product_id=product_id, quantity=1)
        answer = self.ledger.call(
            "AddItem", lambda: stub.AddItem(request, timeout=CALL_TIMEOUT),
            # Discontinued product; list gone with its customer; a full list; another writer's etag.
            expected=(grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
                      grpc.StatusCode.PERMISSION_DENIED))
        if isinstance(answer, shopping_pb2.AddItemResponse):
            with self.ledger.lock:
                self.ledger.items.add((list_id, product_id))

    def shop(self) -> None:
        while not self.stop.is_set():
            customer = self.choice(c for c in self.ledger.customers if c not in self.ledger.deleted)
            product = self.choice(self.ledger.products)
            if customer and product:
                list_id = self.create_list(customer)
                if list_id:
                    self.add_item(list_id, customer, product)
            self.pace()

    def read(self) -> None:
        catalog_pb2, _ = self.system.pb["catalog"]
        offers_pb2, _ = self.system.pb["offers"]
        catalog, offers = self.system.stub("catalog"), self.system.stub("offers")
        while not self.stop.is_set():
            product = self.choice(self.ledger.products)
            if product:
                self.ledger.call("GetProduct", lambda: catalog.GetProduct(
                    catalog_pb2.GetProductRequest(product_id=product), timeout=CALL_TIMEOUT), attempts=1)
                self.ledger.call("ListAvailableOffers", lambda: offers.ListAvailableOffers(
                    offers_pb2.ListAvailableOffersRequest(product_id=product), timeout=CALL_TIMEOUT), attempts=1)
            self.pace()

    # ---- deletions in the middle of bursts

    def bursts(self) -> None:
        """Every second or so: a new customer (or product) named by a burst of creates from eight
        threads, deleted (discontinued) in the middle of it."""
        customers, catalog = self.system.stub("customers"), self.system.stub("catalog")
        offers = self.system.stub("offers")
        while not self.stop.is_set():
            product = self.choice(self.ledger.products)
            if product is None:
                time.sleep(0.1)
                continue
            if self.random() < 0.5:
                target = self.create_customer(customers)
                if target is None:
                    continue
                self.system.token_of(target)

                def burst(i: int, target=target, product=product) -> None:
                    for _ in range(5):
                        if i % 2:
                            self.create_offer(offers, product, target)
                        else:
                            self.create_list(target)

                self.burst(burst, lambda target=target: self.delete_customer(customers, target))
            else:
                target = self.create_product(catalog)
                owner = self.choice(c for c in self.ledger.customers if c not in self.ledger.deleted)
                if target is None or owner is None:
                    continue
                list_id = self.create_list(owner)

                def burst(i: int, target=target, owner=owner, list_id=list_id) -> None:
                    for _ in range(5):
                        if i % 2 or list_id is None:
                            self.create_offer(offers, target, "")
                        else:
                            self.add_item(list_id, owner, target)

                self.burst(burst, lambda target=target: self.discontinue(catalog, target))
            time.sleep(0.5)

    def burst(self, work, change) -> None:
        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.02 + 0.06 * self.random())
        change()
        for t in threads:
            t.join(timeout=60)


class Schedule:
    """The faults of one run, drawn from the seed: (start second, action, target, duration)."""

    ACTIONS = ["kill", "pause", "db-refuse", "db-blackhole"]

    def __init__(self, seed: int, seconds: float):
        rng = random.Random(seed)
        self.events = []
        at = 2.0
        busy: dict[str, float] = {}
        while at < seconds - 5:
            action = rng.choice(self.ACTIONS)
            if action in ("kill", "pause"):
                service = rng.choice(["catalog", "offers", "catalog", "offers", "customers", "shopping"])
                index = rng.randrange(2) if service in ("catalog", "offers") else 0
                target = f"{service}#{index}"
            else:
                target = rng.choice(SERVICES)
            duration = round(rng.uniform(1.0, 5.0), 1)
            if busy.get(target, 0) <= at:
                self.events.append((round(at, 1), action, target, duration))
                busy[target] = at + duration + 0.5
            at += rng.uniform(1.0, 4.0)

    def __str__(self) -> str:
        return "\n".join(f"  t={at:5.1f}s {action:13} {target:12} for {d:.1f}s" for at, action, target, d in self.events)


class Chaos:
    """Carries out a schedule against the system, in a thread of its own."""

    def __init__(self, system: System, schedule: Schedule):
        self.system, self.schedule = system, schedule
        self.done = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def replica(self, target: str) -> Replica:
        service, index = target.split("#")
        return self.system.replicas[service][int(index)]

    def begin(self, action: str, target: str) -> None:
        if action == "kill":
            self.replica(target).kill()
        elif action == "pause":
            self.replica(target).pause()
        elif action == "db-refuse":
            self.system.proxies[target].set("refuse")
        elif action == "db-blackhole":
            self.system.proxies[target].set("blackhole")

    def end(self, action: str, target: str) -> None:
        if action == "kill":
            # Not waited for: its database may be out of reach now; recovery waits.
            self.replica(target).start(wait=False)
        elif action == "pause":
            self.replica(target).resume()
        else:
            self.system.proxies[target].set("none")

    def run(self) -> None:
        started = time.monotonic()
        timeline = sorted([(at, 0, a, t) for at, a, t, _ in self.schedule.events]
                          + [(at + d, 1, a, t) for at, a, t, d in self.schedule.events])
        for at, ending, action, target in timeline:
            wait = started + at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            log(f"{'end' if ending else 'begin'} {action} {target}")
            try:
                (self.end if ending else self.begin)(action, target)
            except Exception as err:  # a fault that could not be made or undone fails the run
                self.errors.append(f"{action} {target}: {type(err).__name__}: {err}")
        self.done.set()

    def undo_all(self) -> None:
        """Whatever is still in effect (after an error), undone."""
        for proxy in self.system.proxies.values():
            proxy.set("none")
        for replica in self.system.all():
            if replica.alive():
                replica.resume()
            else:
                replica.start(wait=False)


def wait_for(condition, bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {bound:.0f} s")


def feeds_at_head(system: System) -> list[str]:
    """The consumers' feeds that are not at their upstream's head yet."""
    behind = []
    heads = {up: int(system.query(up, "SELECT COALESCE(MAX(sequence), 0) FROM outbox_events")[0][0])
             for up in ("catalog", "customers")}
    for consumer in ("offers", "shopping"):
        cursors = dict(system.query(consumer, "SELECT feed, sequence FROM feed_cursors"))
        for feed, head in heads.items():
            if int(cursors.get(feed, 0)) < head:
                behind.append(f"{consumer} follows {feed} at {cursors.get(feed, 0)} of {head}")
    return behind


def applied_twice(system: System) -> list[str]:
    """Events a consumer applied more than once, from the 'feed event applied' lines of all the logs of
    its replicas."""
    twice = []
    for consumer in ("offers", "shopping"):
        seen: Counter = Counter()
        for path in system.logs.glob(f"{consumer}-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if "feed event applied" in line:
                    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
                    seen[(fields.get("feed"), fields.get("sequence"))] += 1
        twice += [f"{consumer} applied {feed} event {seq} {n} times" for (feed, seq), n in seen.items() if n > 1]
    return twice


def invariants(system: System, ledger: Ledger) -> list[str]:
    """Every invariant the run must keep, checked from the databases; the problems found."""
    problems = []
    q = system.query
    products = {row[0]: row[1] for row in q("catalog", "SELECT product_id, state FROM products")}
    customers = {row[0] for row in q("customers", "SELECT customer_id FROM customers")}
    offers = {row[0]: row[1:] for row in q("offers", "SELECT offer_id, product_id, customer_id, state FROM offers")}
    lists = dict(q("shopping", "SELECT list_id, customer_id FROM shopping_lists"))
    items = {(r[0], r[1]): r[2] for r in q("shopping", "SELECT list_id, product_id, available FROM list_items")}

    with ledger.lock:
        acked_products, discontinued = list(ledger.products), set(ledger.discontinued)
        acked_customers, deleted, deleting = list(ledger.customers), set(ledger.deleted), set(ledger.deleting)
        acked_offers, acked_lists, acked_items = dict(ledger.offers), dict(ledger.lists), set(ledger.items)
        answers = {k: set(v) for k, v in ledger.answers.items()}

    # Acknowledged writes.
    problems += [f"product {p} acknowledged, not stored" for p in acked_products if p not in products]
    problems += [f"product {p} discontinued (acknowledged), stored {products.get(p)}"
                 for p in discontinued if products.get(p) != "DISCONTINUED"]
    problems += [f"customer {c} acknowledged, not stored" for c in acked_customers
                 if c not in deleting and c not in customers]
    problems += [f"customer {c} deleted (acknowledged), still stored" for c in deleted if c in customers]
    problems += [f"offer {o} acknowledged, not stored" for o in acked_offers if o not in offers]
    problems += [f"list {li} acknowledged, not stored" for li, c in acked_lists.items()
                 if c not in deleted and c in customers and li not in lists]
    problems += [f"item {i} acknowledged, not stored" for i in acked_items
                 if i[0] in lists and i not in items]
    # One resource per request_id: every answer to one names one resource; one row per key.
    problems += [f"request_id {k} answered with {sorted(v)}" for k, v in answers.items() if len(v) > 1]
    for service, table in (("catalog", "products"), ("offers", "offers")):
        keys = int(q(service, "SELECT COUNT(*) FROM idempotency_keys")[0][0])
        rows = int(q(service, f"SELECT COUNT(*) FROM {table}")[0][0])
        if keys != rows:
            problems.append(f"{service}: {rows} {table} for {keys} request_ids")
    # What deletions and discontinuations take away.
    for offer_id, (product_id, customer_id, state) in offers.items():
        if state != "ACTIVE":
            continue
        if products.get(product_id) != "ACTIVE":
            problems.append(f"offer {offer_id} ACTIVE on product {product_id} ({products.get(product_id)})")
        if customer_id and customer_id not in customers:
            problems.append(f"offer {offer_id} ACTIVE for deleted customer {customer_id}")
    problems += [f"list {li} of deleted customer {c}" for li, c in lists.items() if c not in customers]
    problems += [f"item {li}/{p} available, product {products.get(p)}" for (li, p), available in items.items()
                 if available == "1" and products.get(p) != "ACTIVE"]
    return problems


@pytest.fixture(scope="module")
def system():
    for tool in ("psql",):
        assert subprocess.run(["which", tool], capture_output=True).returncode == 0, f"the chaos run needs {tool}"
    assert (BIN_DIR / "agora-fault-proxy").exists(), "build the workspace's binaries first (cargo build --bins)"
    work = Path(tempfile.mkdtemp(prefix="agora-chaos-"))
    system = System(work, generated_client())
    try:
        system.start()
        yield system
    finally:
        system.stop()
        log(f"logs: {system.logs}")


def test_invariants_hold_through_overlapping_faults(system):
    schedule = Schedule(SEED, LOAD_SECONDS)
    replay = f"seed {SEED} (replay: make test-chaos SEED={SEED}); the schedule:\n{schedule}"
    log(replay)
    ledger = Ledger()
    catalog_pb2, _ = system.pb["catalog"]
    family = system.stub("catalog").CreateFamily(catalog_pb2.CreateFamilyRequest(
        family=catalog_pb2.Family(display_name="Lamps")), timeout=10).family

    chaos = Chaos(system, schedule)
    started = time.monotonic()
    with Load(system, ledger, family.family_id, random.Random(SEED + 1)):
        chaos.thread.start()
        chaos.done.wait(timeout=LOAD_SECONDS + 60)
    loaded = time.monotonic() - started
    if chaos.errors:
        chaos.undo_all()

    # Recovery: every replica SERVING again, every feed at its head.
    recovery = time.monotonic()
    for replica in system.all():
        wait_serving(replica.admin)
    wait_for(lambda: not feeds_at_head(system), RECOVERY_BOUND, f"the feeds catching up ({feeds_at_head(system)})")
    recovered = time.monotonic() - recovery

    calls = sum(ledger.codes.values())
    ok = sum(n for (_, code), n in ledger.codes.items() if code == "OK")
    by_code = Counter()
    for (_, code), n in ledger.codes.items():
        by_code[code] += n
    log(f"{len(schedule.events)} faults over {loaded:.0f} s; {calls} calls, {ok} OK; codes: {dict(by_code)}")
    log(f"acknowledged: {len(ledger.products)} products ({len(ledger.discontinued)} discontinued), "
        f"{len(ledger.customers)} customers ({len(ledger.deleted)} deleted), {len(ledger.offers)} offers, "
        f"{len(ledger.lists)} lists, {len(ledger.items)} items; recovered in {recovered:.1f} s")

    problems = list(chaos.errors)
    problems += ledger.findings
    problems += invariants(system, ledger)
    problems += applied_twice(system)
    for path in sorted(system.logs.glob("*.log")):
        text = path.read_text(errors="replace")
        if "panicked" in text:
            problems.append(f"a panic in {path.name}")
        # PostgreSQL's notice when a pooled connection was handed on inside a transaction.
        if "there is already a transaction in progress" in text:
            problems.append(f"a connection handed on inside a transaction, in {path.name}")
    if ok < 500:
        problems.append(f"only {ok} calls answered OK: too little load to show anything")
    assert not problems, f"{len(problems)} problems with {replay}\n" + "\n".join(problems[:40])
