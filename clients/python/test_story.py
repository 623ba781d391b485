"""The story of Agora told by a Python client generated from proto/ with
grpcio-tools, over TLS with tokens: staff make a family and a product, a
customer and an offer; the customer, with a token of their own, reads their
available offers and keeps a shopping list with an item; a discontinued
product and its effects downstream; what another customer may not do; and
the health of every service, which needs no token."""

import shutil
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agora_local import Credentials, Nats, Running

BOUND_SECONDS = 15


def stub(system, pb, context, token):
    _, grpc_module = pb[context]
    service = {
        "catalog": "CatalogServiceStub",
        "customers": "CustomerServiceStub",
        "offers": "OfferServiceStub",
        "shopping": "ShoppingListServiceStub",
    }[context]
    return getattr(grpc_module, service)(system.channel(context, token))


def timestamp(seconds_from_now: int) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(time.time()) + seconds_from_now)
    return ts


def eventually(condition, what: str):
    deadline = time.monotonic() + BOUND_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {BOUND_SECONDS} s"
        time.sleep(0.05)


def test_the_story_of_a_shopper(system, pb):
    tell_the_story(system, pb)


@pytest.fixture(scope="module")
def on_jetstream():
    """The four services again, their change feeds on NATS JetStream (a nats-server of their own, over
    TLS, each service presenting its certificate)."""
    assert shutil.which("nats-server"), "the story on JetStream needs nats-server (Debian: apt-get install nats-server)"
    data = Path(tempfile.mkdtemp(prefix="agora-python-jetstream-"))
    nats = Nats(Credentials(data), data).start()
    try:
        with Running(data, nats=nats) as running:
            yield running.system
    finally:
        nats.kill()


def test_the_story_of_a_shopper_on_jetstream(on_jetstream, pb):
    """The same story, the same effects, with the feeds on JetStream."""
    tell_the_story(on_jetstream, pb)


def tell_the_story(system, pb):
    catalog_pb2, _ = pb["catalog"]
    customers_pb2, _ = pb["customers"]
    offers_pb2, _ = pb["offers"]
    shopping_pb2, _ = pb["shopping"]
    staff = system.token("staff")
    catalog, customers = stub(system, pb, "catalog", staff), stub(system, pb, "customers", staff)
    offers = stub(system, pb, "offers", staff)

    family = catalog.CreateFamily(
        catalog_pb2.CreateFamilyRequest(family=catalog_pb2.Family(display_name="Lamps")), timeout=5
    ).family
    product = catalog.CreateProduct(
        catalog_pb2.CreateProductRequest(
            request_id=str(uuid.uuid4()),
            product=catalog_pb2.Product(
                display_name="Desk lamp",
                family_id=family.family_id,
                price=pb["money"].Money(currency_code="EUR", amount_minor=3990),
            ),
        ),
        timeout=5,
    ).product
    assert product.state == catalog_pb2.PRODUCT_STATE_ACTIVE

    customer = customers.CreateCustomer(
        customers_pb2.CreateCustomerRequest(
            customer=customers_pb2.Customer(given_name="Ada", family_name="Lovelace", email="ada@example.com")
        ),
        timeout=5,
    ).customer

    offer = offers.CreateOffer(
        offers_pb2.CreateOfferRequest(
            offer=offers_pb2.Offer(
                product_id=product.product_id,
                customer_id=customer.customer_id,
                kind=offers_pb2.OFFER_KIND_SPEED,
                discount_percent=15,
                start_time=timestamp(-60),
                end_time=timestamp(3600),
            )
        ),
        timeout=5,
    ).offer
    # The customer signs in: their id is their token's subject.
    me = system.token("customer", customer.customer_id)
    my_offers, shopping = stub(system, pb, "offers", me), stub(system, pb, "shopping", me)
    available = my_offers.ListAvailableOffers(
        offers_pb2.ListAvailableOffersRequest(customer_id=customer.customer_id), timeout=5
    )
    assert not available.fallback
    assert [o.offer_id for o in available.offers] == [offer.offer_id]

    shopping_list = shopping.CreateShoppingList(
        shopping_pb2.CreateShoppingListRequest(
            shopping_list=shopping_pb2.ShoppingList(customer_id=customer.customer_id, title="Study")
        ),
        timeout=5,
    ).shopping_list
    shopping_list = shopping.AddItem(
        shopping_pb2.AddItemRequest(list_id=shopping_list.list_id, product_id=product.product_id, quantity=2),
        timeout=5,
    ).shopping_list
    assert [(i.product_id, i.quantity, i.available) for i in shopping_list.items] == [(product.product_id, 2, True)]

    # The catalog discontinues the lamp: offers and shopping hear of it.
    catalog.DiscontinueProduct(catalog_pb2.DiscontinueProductRequest(product_id=product.product_id), timeout=5)

    def offer_withdrawn():
        got = offers.GetOffer(offers_pb2.GetOfferRequest(offer_id=offer.offer_id), timeout=5).offer
        return got.state == offers_pb2.OFFER_STATE_WITHDRAWN

    def item_unavailable():
        got = shopping.GetShoppingList(
            shopping_pb2.GetShoppingListRequest(list_id=shopping_list.list_id), timeout=5
        ).shopping_list
        return [i.available for i in got.items] == [False]

    eventually(offer_withdrawn, "the offer on the discontinued product is withdrawn")
    eventually(item_unavailable, "the discontinued product is marked unavailable on the list")
    assert not my_offers.ListAvailableOffers(
        offers_pb2.ListAvailableOffersRequest(customer_id=customer.customer_id), timeout=5
    ).offers

    # Another customer may neither read the list nor change the catalog.
    other = system.token("customer", "cus_someone_else")
    for call in (
        lambda: stub(system, pb, "shopping", other).GetShoppingList(
            shopping_pb2.GetShoppingListRequest(list_id=shopping_list.list_id), timeout=5
        ),
        lambda: stub(system, pb, "catalog", other).DiscontinueProduct(
            catalog_pb2.DiscontinueProductRequest(product_id=product.product_id), timeout=5
        ),
    ):
        try:
            call()
            raise AssertionError("another customer was let through")
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err


def test_errors_carry_their_code_and_field(system, pb):
    catalog_pb2, _ = pb["catalog"]
    catalog = stub(system, pb, "catalog", system.token("staff"))
    try:
        catalog.CreateFamily(catalog_pb2.CreateFamilyRequest(family=catalog_pb2.Family(display_name="")), timeout=5)
        raise AssertionError("an empty name was accepted")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "family.display_name" in err.details()
    try:
        catalog.GetProduct(catalog_pb2.GetProductRequest(product_id="prd_nothing"), timeout=5)
        raise AssertionError("an unknown product was found")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND
    try:
        stub(system, pb, "catalog", None).ListFamilies(catalog_pb2.ListFamiliesRequest(), timeout=5)
        raise AssertionError("a call without a token was answered")
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_service_is_serving(system):
    """Health needs no token: over TLS on the gRPC port, and in plaintext on the admin port."""
    for name in system.addrs:
        for channel in (system.channel(name, None), grpc.insecure_channel(system.admins[name])):
            with channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=5
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
