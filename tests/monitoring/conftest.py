"""The monitoring checked against the real thing: promtool on the rules, the
names the rules and dashboards use against four running services, and the
alerts through a real Prometheus. Run by `make observe-check`."""

import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "tools"))

from agora_local import Credentials, Nats, Running  # noqa: E402


@pytest.fixture(scope="module")
def running():
    """The four services, started for this module's tests."""
    with Running(Path(tempfile.mkdtemp(prefix="agora-monitoring-"))) as running:
        yield running


@pytest.fixture(scope="module")
def running_on_jetstream():
    """The four services again, their change feeds on NATS JetStream (a nats-server of their own)."""
    data = Path(tempfile.mkdtemp(prefix="agora-monitoring-jetstream-"))
    nats = Nats(Credentials(data), data).start()
    try:
        with Running(data, nats=nats) as running:
            yield running
    finally:
        nats.kill()
