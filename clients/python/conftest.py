"""Starts the four Agora services on free loopback ports, each with its own
SQLite file, secured as `make run` secures them (TLS, mTLS between
services, tokens), and generates the Python client from proto/ with
grpcio-tools.

Nothing here knows Rust: the services are the built binaries, found in
target/debug (override with AGORA_BIN_DIR), the credentials are made by
the agora-dev binary beside them, and the client is what any Python user
of the contracts would generate."""

import tempfile
from pathlib import Path

import pytest

from agora_local import Running, free_port, generated_client


@pytest.fixture(scope="session")
def pb():
    """The generated modules, importable as agora.<context>.v1.*_pb2."""
    return generated_client()


# The origin of a web page the services let call them (CORS, gRPC-Web):
# the storefront's, when test_web_page.py serves it.
WEB_PORT = free_port()
WEB_ORIGIN = f"http://127.0.0.1:{WEB_PORT}"


@pytest.fixture(scope="session")
def running():
    """The four services' processes; stopped with SIGTERM at the end."""
    data = Path(tempfile.mkdtemp(prefix="agora-python-data-"))
    with Running(data, extra_env={"AGORA_CORS_ORIGINS": WEB_ORIGIN}) as running:
        yield running


@pytest.fixture(scope="session")
def system(running):
    """The four running services, and the credentials to call them."""
    return running.system
