"""A bounded fuzz test: random bytes, and requests built and mutated from
the descriptors, sent to every RPC of every service. Whatever comes in, the
answer is the caller's mistake or a success, never INTERNAL or UNKNOWN, and
no process dies. Fixed seed and count, and a time budget: the same cases
on every run, and a run that cannot hang."""

import random
import time

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as F

from agora_local import SERVICES
from test_bad_input import every_rpc

SEED = 20261202
CASES_PER_RPC = 60
BUDGET_S = 120
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}

INTS = [0, 1, -1, 2, 7, 50, 100, 999, 1000, 1001, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
UINTS = [0, 1, 2, 100, 2**32 - 1, 2**64 - 1]
STRINGS = [
    "", " ", "a", "fam_1", "prd_0", "cus_careless", "EUR", "eur", "XXX", "\x00", "\t\n", "é" * 300,
    "x" * 5000, "../../etc/passwd", "'; DROP TABLE products; --", "%s%n", "\u202e\ufeff", "🛒" * 100,
    "display_name", "price", "state", "title,description", "v1|1|", "djF8MXw",
]


def random_text(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(STRINGS)
    alphabet = "abcXYZ019_-|/.: \u00e9\u4e2d\U0001f600\x01"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))


def scalar(rng: random.Random, field) -> object:
    t = field.type
    if t in (F.TYPE_STRING,):
        return random_text(rng)
    if t == F.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 64))
    if t == F.TYPE_BOOL:
        return rng.random() < 0.5
    if t == F.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return rng.choice(numbers + [-1, 99, 2**31 - 1])
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return rng.choice([0.0, -1.5, 1e300, float("inf"), float("nan")])
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return rng.choice([u for u in UINTS if u < 2**32])
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return rng.choice(UINTS)
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return rng.choice([i for i in INTS if -(2**31) <= i < 2**31])
    return rng.choice(INTS)


def fill(rng: random.Random, message, depth: int = 0) -> None:
    """Sets a random subset of `message`'s fields to random values, from
    its descriptor: nested messages (bounded depth), repeated fields (now
    and then a long one), every scalar type."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        repeated = field.is_repeated
        count = (rng.choice([0, 1, 2, 5, 300]) if repeated else 1)
        for _ in range(count):
            if field.type == F.TYPE_MESSAGE:
                if depth >= 3:
                    break
                if field.message_type.GetOptions().map_entry:
                    break
                child = getattr(message, field.name).add() if repeated else getattr(message, field.name)
                if not repeated:
                    child.SetInParent()
                fill(rng, child, depth + 1)
            elif repeated:
                getattr(message, field.name).append(scalar(rng, field))
            else:
                try:
                    setattr(message, field.name, scalar(rng, field))
                except (ValueError, TypeError):
                    pass  # a value the Python runtime refuses to encode


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Byte-level damage to an encoded message: flips, cuts, insertions."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if data and kind < 0.4:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif data and kind < 0.6:
            del data[rng.randrange(len(data)):]
        elif kind < 0.8:
            at = rng.randint(0, len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            data += bytes([rng.randrange(256) for _ in range(rng.randint(1, 6))])
    return bytes(data)


def case(rng: random.Random, request_class, n: int) -> bytes:
    if n % 8 == 0:
        return rng.randbytes(rng.randint(0, 256))
    message = request_class()
    fill(rng, message)
    encoded = message.SerializeToString()
    return mutate(rng, encoded) if n % 3 == 0 else encoded


def call(channel, path: str, streaming: bool, body: bytes) -> grpc.StatusCode:
    try:
        if streaming:
            # A feed would stream for ever: the first answers, then cancel.
            stream = channel.unary_stream(path)(body, timeout=0.25)
            for count, _ in enumerate(stream):
                if count >= 2:
                    stream.cancel()
                    break
        else:
            channel.unary_unary(path)(body, timeout=5)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_fuzzed_requests_never_get_internal_or_unknown_and_no_process_dies(running, system, pb):
    rng = random.Random(SEED)
    staff, offers = system.token("staff"), system.token("service", "offers")
    shopper = system.token("customer", "cus_careless")
    started = time.monotonic()
    sent, codes, bad = 0, {}, []
    for name, path, streaming in every_rpc(pb):
        service, method = path.strip("/").split("/")
        descriptor = pb[name][0].DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[method]
        request_class = message_factory.GetMessageClass(descriptor.input_type)
        token = offers if "/Watch" in path else shopper if name == "shopping" else staff
        with system.channel(name, token) as channel:
            for n in range(CASES_PER_RPC):
                if time.monotonic() - started > BUDGET_S:
                    break
                body = case(rng, request_class, n)
                code = call(channel, path, streaming, body)
                sent += 1
                codes[code.name] = codes.get(code.name, 0) + 1
                if code in BAD:
                    bad.append((path, code.name, body[:80]))
    print(f"fuzz: {sent} requests in {time.monotonic() - started:.1f} s: {codes}")
    assert not bad, bad[:10]
    assert sent >= 28 * CASES_PER_RPC // 2, f"only {sent} requests within the budget"
    for name in SERVICES:
        assert running.processes[name].poll() is None, f"{name} died"
