"""What a careless client gets for bytes that are not a message, and for a
message over the size limit: the caller's mistake, with the right code,
through every RPC of every service (taken from the descriptors, so a new
RPC is covered the day it is added)."""

import re
import urllib.request

import grpc
import pytest

from agora_local import SERVICES

NOT_A_MESSAGE = b"\xff\xff\xff"  # a field tag whose varint never ends
LIMIT = 4 * 1024 * 1024  # AGORA_MAX_MESSAGE_BYTES' default


def every_rpc(pb):
    for name in SERVICES:
        module = pb[name][0]
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield name, f"/{service.full_name}/{method.name}", method.server_streaming


def send(channel, path: str, streaming: bool, body: bytes):
    """Sends `body` as it is, with no serializer: the RPC's answer code."""
    try:
        if streaming:
            for _ in channel.unary_stream(path)(body, timeout=5):
                pass
        else:
            channel.unary_unary(path)(body, timeout=5)
    except grpc.RpcError as err:
        return err.code(), err.details(), dict(err.trailing_metadata() or ())
    return grpc.StatusCode.OK, "", {}


def malformed_count(system, name: str) -> float:
    text = urllib.request.urlopen(f"http://{system.admins[name]}/metrics", timeout=5).read().decode()
    match = re.search(r"^agora_grpc_server_malformed_total (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_body_that_is_not_a_message_is_invalid_argument_on_every_rpc_and_counted(system, pb):
    staff, offers = system.token("staff"), system.token("service", "offers")
    shopper = system.token("customer", "cus_careless")
    before = {name: malformed_count(system, name) for name in SERVICES}
    sent = dict.fromkeys(SERVICES, 0)
    answers = {}
    for name, path, streaming in every_rpc(pb):
        # The change feeds are the services', lists their owners', the rest staff's.
        token = offers if "/Watch" in path else shopper if name == "shopping" else staff
        with system.channel(name, token) as channel:
            answers[path] = send(channel, path, streaming, NOT_A_MESSAGE)
        sent[name] += 1
    wrong = {path: answer[:2] for path, answer in answers.items() if answer[0] != grpc.StatusCode.INVALID_ARGUMENT}
    assert not wrong, wrong
    assert len(answers) >= 28
    for name in SERVICES:
        assert malformed_count(system, name) - before[name] == sent[name], name


@pytest.mark.parametrize("name", SERVICES)
def test_a_request_over_the_size_limit_is_resource_exhausted_naming_the_limit(system, pb, name):
    path, streaming = next((p, s) for n, p, s in every_rpc(pb) if n == name and "/Watch" not in p)
    token = system.token("customer", "cus_careless") if name == "shopping" else system.token("staff")
    with system.channel(name, token) as channel:
        code, details, trailers = send(channel, path, streaming, b"\x0a" + b"x" * (LIMIT + 16))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    assert str(LIMIT) in details and "not retried" in details, details
    # Unlike a shed call, no RetryInfo (no details at all): never worth sending again.
    assert "grpc-status-details-bin" not in trailers, trailers
