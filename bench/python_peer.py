"""The Python peer of `make bench`: what a user might pick instead of the
catalog service. A grpc.aio server that answers agora.catalog.v1
CatalogService/GetProduct from the catalog's SQLite file with the standard
library's sqlite3 module, one query per call, as the service does. Every
other RPC is UNIMPLEMENTED (the generated servicer's default).

    tools/.venv/bin/python bench/python_peer.py --db <catalog.db> [--addr 127.0.0.1:0] [--gen <dir>]

--gen names a directory holding the Python client generated from proto/
(bench/run.py passes the one it generated); without it, the client is
generated into a temporary directory, as clients/python/conftest.py does.
The first stdout line is `python-peer listening grpc=<addr>`; SIGTERM stops
it.
"""

import argparse
import asyncio
import signal
import sqlite3
import sys
import tempfile
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
# The client generation the Python client tests use.
sys.path.insert(0, str(ROOT / "clients" / "python"))
from agora_local import generate_client  # noqa: E402

COLUMNS = (
    "product_id, display_name, description, family_id, currency_code, amount_minor, state, revision, "
    "create_time, update_time"
)


def timestamp(micros: int, ts_type):
    return ts_type(seconds=micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def make_servicer(db_path: str):
    import agora.catalog.v1.catalog_service_pb2 as pb
    import agora.catalog.v1.catalog_service_pb2_grpc as pb_grpc
    import agora.common.v1.money_pb2 as money_pb2
    from google.protobuf.timestamp_pb2 import Timestamp

    states = {"ACTIVE": pb.PRODUCT_STATE_ACTIVE, "DISCONTINUED": pb.PRODUCT_STATE_DISCONTINUED}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
    sql = f"SELECT {COLUMNS} FROM products WHERE product_id = ?"

    class Catalog(pb_grpc.CatalogServiceServicer):
        async def GetProduct(self, request, context):
            if not request.product_id:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "product_id is required")
            row = db.execute(sql, (request.product_id,)).fetchone()
            if row is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"product {request.product_id} not found")
            (pid, name, description, family, currency, amount, state, revision, created, updated) = row
            return pb.GetProductResponse(
                product=pb.Product(
                    product_id=pid,
                    display_name=name,
                    description=description,
                    family_id=family,
                    price=money_pb2.Money(currency_code=currency, amount_minor=amount),
                    state=states[state],
                    etag=f"r{revision}",
                    create_time=timestamp(created, Timestamp),
                    update_time=timestamp(updated, Timestamp),
                )
            )

    return Catalog(), pb_grpc.add_CatalogServiceServicer_to_server


async def serve(db_path: str, addr: str) -> None:
    servicer, add = make_servicer(db_path)
    server = grpc.aio.server()
    add(servicer, server)
    host = addr.rsplit(":", 1)[0]
    port = server.add_insecure_port(addr)
    await server.start()
    print(f"python-peer listening grpc={host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True, help="the catalog's SQLite file")
    parser.add_argument("--addr", default="127.0.0.1:0", help="listen address; port 0 picks a free one")
    parser.add_argument("--gen", help="directory of the generated Python client")
    args = parser.parse_args()
    gen = Path(args.gen) if args.gen else Path(tempfile.mkdtemp(prefix="agora-bench-peer-"))
    if not args.gen:
        generate_client(gen)
    sys.path.insert(0, str(gen))
    asyncio.run(serve(args.db, args.addr))


if __name__ == "__main__":
    main()
