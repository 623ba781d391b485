"""`make observe`: a real Prometheus (Debian's, unpacked under
tools/prometheus by tools/install-prometheus.sh) scraping the system that
`make run` started, with Agora's rules (deploy/monitoring/rules.yaml)
loaded. Open http://127.0.0.1:9090/alerts; Ctrl-C stops it.

The scrape job is the one the rules expect: job="agora", and `service`
naming the context. tests/monitoring writes its configuration with
`config()` too. Standard library only: JSON is YAML."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contexts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "tools" / "prometheus" / "usr" / "bin" / "prometheus"
RULES = ROOT / "deploy" / "monitoring" / "rules.yaml"
# The admin ports `make run` binds, replica r on 127.0.0.r (tools/lib.sh).
ADMIN_PORTS = {name: admin for name, (_, admin) in contexts.ports().items()}


def config(targets: dict, rule_files: list, interval: str = "15s") -> str:
    """A Prometheus configuration: `targets` maps a service to its admin
    addresses (host:port), scraped every `interval`, as job "agora"."""
    return json.dumps({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(f) for f in rule_files],
        "scrape_configs": [{
            "job_name": "agora",
            "static_configs": [{"targets": list(addrs), "labels": {"service": service}}
                               for service, addrs in targets.items()],
        }],
    }, indent=2)


def main() -> int:
    if not PROMETHEUS.exists():
        print("Prometheus is not installed: tools/install-prometheus.sh (make observe does it)", file=sys.stderr)
        return 1
    replicas = int(os.environ.get("REPLICAS", "1"))
    targets = {s: [f"127.0.0.{r}:{port}" for r in range(1, replicas + 1)] for s, port in ADMIN_PORTS.items()}
    data = ROOT / "data" / "prometheus"
    data.mkdir(parents=True, exist_ok=True)
    (data / "prometheus.yml").write_text(config(targets, [RULES]))
    address = os.environ.get("PROMETHEUS_ADDR", "127.0.0.1:9090")
    print(f"Prometheus on http://{address} (alerts: http://{address}/alerts), scraping "
          f"{sum(len(a) for a in targets.values())} admin ports; Ctrl-C stops it", flush=True)
    os.execv(PROMETHEUS, [str(PROMETHEUS), f"--config.file={data / 'prometheus.yml'}",
                          f"--storage.tsdb.path={data / 'tsdb'}", f"--web.listen-address={address}",
                          "--log.level=warn"])


if __name__ == "__main__":
    sys.exit(main())
