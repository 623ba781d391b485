"""The two references Agora's catalog is measured against, started on the same catalog file.

- `start_bare`: the bare tonic server (bench/bare, binary agora-bench-bare): GetProduct from
  a map filled once at start, no middleware, health or database on the request path; the
  physical limit. With `contract`, the same server behind the least stack that keeps the
  services' runtime contract, each piece from its crate (bench/bare/src/contract.rs): the
  bound of the catalog's GetProduct
- `start_python_peer`: the Python grpc.aio peer (bench/python_peer.py): GetProduct from the
  SQLite file with the standard sqlite3 module; what a user might pick instead

Neither has health or metrics: both are waited for until they print their address.
"""

import os
import sys
from pathlib import Path

from .runner import RELEASE, ROOT, Procs, Server

PYTHON = sys.executable


def start_bare(procs: Procs, db: Path, tls: dict | None = None, contract: bool = False) -> Server:
    """The bare tonic server; over TLS with the certificate and key of `tls` (AGORA_TLS_CERT_FILE and
    AGORA_TLS_KEY_FILE, as DevCredentials.env gives them) when given. With `contract`, behind the
    contract's stack, checking tokens against the issuer's keys when `tls` names them too."""
    env = {"AGORA_GRPC_ADDR": "127.0.0.1:0", "AGORA_DATABASE_URL": f"sqlite:{db}", "PATH": os.environ.get("PATH", "")}
    tls = tls or {}
    env.update({k: v for k, v in tls.items() if k in ("AGORA_TLS_CERT_FILE", "AGORA_TLS_KEY_FILE")})
    name = "bare-tls" if tls else "bare"
    if contract:
        env["AGORA_BARE_STACK"] = "contract"
        env.update({k: v for k, v in tls.items() if k.startswith(("AGORA_JWKS", "AGORA_JWT"))})
        name += "-contract"
    return procs.start(name, [str(RELEASE / "agora-bench-bare")], env).wait_listening()


def start_python_peer(procs: Procs, db: Path, gen: Path) -> Server:
    """`gen`: the directory of the generated Python client (Client.dir), so the peer does not generate its own."""
    return procs.start("python-peer", [PYTHON, str(ROOT / "bench" / "python_peer.py"), "--db", str(db),
                                       "--gen", str(gen)]).wait_listening()


def start_otlp_sink(procs: Procs) -> Server:
    """An OTLP collector that keeps nothing, off the server's core: where traced servers export."""
    return procs.start("otlp-sink", [PYTHON, str(ROOT / "bench" / "otlp_sink.py")], pin=False).wait_listening()
