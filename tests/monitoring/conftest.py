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

from agora_local import Running  # noqa: E402


@pytest.fixture(scope="module")
def running():
    """The four services, started for this module's tests."""
    with Running(Path(tempfile.mkdtemp(prefix="agora-monitoring-"))) as running:
        yield running
