"""The contexts of Agora as proto/context_map.json declares them, for the
tools: which services there are, their default ports, who follows whom and
who publishes a change feed. Every tool that lists services reads them here,
so a context added to the map (`make context`) is run, deployed and
monitored without another list to edit.

Run as a script, it prints `name grpc-port admin-port` a line, in the
map's order: what tools/lib.sh reads into SERVICES."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "proto" / "context_map.json"


def context_map() -> dict:
    return json.loads(MAP.read_text())


def contexts() -> dict:
    """name -> its entry (package, crate, role, owns, grpc_port, admin_port)."""
    return context_map()["contexts"]


def ports() -> dict:
    """name -> (gRPC port, admin port): the services' own defaults."""
    return {name: (c["grpc_port"], c["admin_port"]) for name, c in contexts().items()}


def relations() -> list:
    return context_map()["relations"]


def proto(name: str) -> str:
    """The context's service file, relative to proto/agora/."""
    return f"{name}/v1/{name}_service.proto"


def followers() -> list:
    """The contexts that follow an upstream's change feed."""
    return sorted({r["downstream"] for r in relations() if r.get("feed")})


def publishers() -> list:
    """The contexts that publish a change feed: a Watch...Events RPC."""
    watch = re.compile(r"^\s*rpc Watch\w+Events\(", re.M)
    return [name for name in contexts()
            if watch.search((ROOT / "proto" / "agora" / proto(name)).read_text())]


if __name__ == "__main__":
    for name, (grpc, admin) in ports().items():
        print(name, grpc, admin)
