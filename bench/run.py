"""`make bench`: Agora measured side by side with its references, in one run.

Run with tools/.venv/bin/python (grpcio, grpcio-tools). It builds the release
binaries once, prepares the data (catalog SQLite files with 1,000 and
1,000,000 products, a PostgreSQL database it creates and drops, an offers
file), then measures with h2load (nghttp2-client) speaking gRPC:

  references  the bare tonic server (bench/bare: GetProduct from memory, no
              middleware; and behind the runtime contract's crates, the
              bound of the catalog's GetProduct) and the Python grpc.aio
              peer (bench/python_peer.py: GetProduct from the same SQLite file)
  Agora       GetProduct on SQLite (plaintext, TLS, TLS and a token) and
              PostgreSQL, ListAvailableOffers, CreateProduct and CreateOffer
              (eight writers, both SQLite durability settings), offers on PostgreSQL with one and two replicas,
              StreamProducts, start-up and idle memory of every service,
              overload, and scale (1,000 versus 1,000,000 products)

Servers run on one core and h2load on the other (taskset). Every call kind
is checked with a real gRPC client before and after its run (h2load sees
HTTP 200 only), and the Agora services' own metrics count the gRPC codes of
the run. The table is printed and, in a full run, written into
BENCHMARKS.md between its markers with the machine it came from.

BENCH_QUICK=1: smaller counts and 1,000 products instead of a million for
the streaming and scale parts; a smoke run, BENCHMARKS.md is left alone.
BENCH_BUILD=0: use the binaries already in target/dist instead of building.
Figures are reported, never asserted: only ratios of one run count.

This file is the entry point; the harness is the package beside it,
bench/agora_bench/: runner (settings, processes, h2load, Bench), data,
references, scenarios (one function per measurement, run in order by
run_all) and report (the table, BENCHMARKS.md).
"""

import shutil
import sys
import tempfile
from pathlib import Path

from agora_bench import runner
from agora_bench.data import POSTGRES_URL, psql
from agora_bench.report import machine
from agora_bench.runner import Bench, Client, Procs, build
from agora_bench.scenarios import run_all


def main() -> int:
    if shutil.which("h2load") is None:
        print("h2load is missing: apt-get install nghttp2-client (make bench does it)", file=sys.stderr)
        return 2
    build()
    info = machine()
    runner.pin()
    work = Path(tempfile.mkdtemp(prefix="agora-bench-"))
    procs = Procs(work)
    created: list[str] = []  # the PostgreSQL database, once created
    ok = False
    try:
        client = Client(work / "gen")
        bench = Bench(work, procs, client)
        run_all(bench, info, created)
        ok = True
    finally:
        procs.stop_all()
        for db in created:
            try:
                psql(POSTGRES_URL, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", bound=60)
            except Exception as err:
                print(f"dropping {db}: {err}", file=sys.stderr)
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work files and logs kept in {work}", file=sys.stderr)
    # Figures are not asserted, but a call that did not answer grpc-status 0 makes them void.
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
