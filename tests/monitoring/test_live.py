"""The monitoring against four real services: every metric and label the
rules and dashboards use is one the services export (so a rename breaks the
build, not the pager), and a real Prometheus, scraping them with the rules
loaded, raises AgoraServiceDown when catalog stops and resolves it when
catalog is back."""

import json
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import yaml

import observe
from agora_local import SERVICES, free_port, generated_client

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
# Labels the scrape adds to every series (job, instance; service, and in
# Kubernetes pod and namespace), and the histogram's own.
TARGET_LABELS = {"job", "instance", "service", "pod", "namespace"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan"}
BOUND_SECONDS = 60


def scrape(admin: str) -> dict:
    """The series of one service: name -> the label names seen on it."""
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
        series.setdefault(match.group(1), set()).update(labels)
    return series


def uses(expr: str) -> tuple[dict, set]:
    """The metrics an expression reads, each with the label names its
    matchers name, and the label names it groups by."""
    selectors = {}
    for name, body in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        selectors.setdefault(name, set()).update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body))
    grouped = {label.strip() for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
               for label in group.split(",") if label.strip()}
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    for name in re.findall(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", bare):
        if name not in KEYWORDS:
            selectors.setdefault(name, set())
    return selectors, grouped


def expressions() -> list:
    """Every expression of the rules and of the dashboards, with where it is."""
    out = []
    for group in yaml.safe_load((MONITORING / "rules.yaml").read_text())["groups"]:
        for rule in group["rules"]:
            out.append((rule.get("alert") or rule["record"], rule["expr"]))
    for path in sorted((MONITORING / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((f"{path.name}: {panel['title']}", target["expr"]))
    return out


def call_every_service(running) -> None:
    """One call to each service, so its call metrics exist."""
    pb = generated_client()
    system = running.system
    staff = system.token("staff")
    catalog_pb2, catalog_grpc = pb["catalog"]
    customers_pb2, customers_grpc = pb["customers"]
    offers_pb2, offers_grpc = pb["offers"]
    shopping_pb2, shopping_grpc = pb["shopping"]
    calls = [
        ("catalog", lambda c: catalog_grpc.CatalogServiceStub(c).ListFamilies(catalog_pb2.ListFamiliesRequest())),
        ("customers", lambda c: customers_grpc.CustomerServiceStub(c).ListCustomers(
            customers_pb2.ListCustomersRequest())),
        ("offers", lambda c: offers_grpc.OfferServiceStub(c).ListAvailableOffers(
            offers_pb2.ListAvailableOffersRequest())),
        ("shopping", lambda c: shopping_grpc.ShoppingListServiceStub(c).GetShoppingList(
            shopping_pb2.GetShoppingListRequest(list_id="lst_missing"))),
    ]
    for name, call in calls:
        with system.channel(name, staff) as channel:
            try:
                call(channel)
            except grpc.RpcError:
                pass  # any code: the call is counted


def test_every_metric_and_label_the_rules_and_dashboards_use_is_exported(running, running_on_jetstream):
    """Both ways the feeds travel: the producers' Watch streams, and NATS JetStream."""
    exported = {}
    admins = running_on_jetstream.system.admins
    for consumer in ("offers", "shopping"):
        # Each applies its partitions once it has found the producers' streams.
        wait_for(f"{consumer} applying the streams' partitions",
                 lambda: "agora_events_lag_events" in scrape(admins[consumer]))
    for system in (running, running_on_jetstream):
        call_every_service(system)
        for name in SERVICES:
            for metric, labels in scrape(system.system.admins[name]).items():
                exported.setdefault(metric, set()).update(labels)
    records = {r["record"] for g in yaml.safe_load((MONITORING / "rules.yaml").read_text())["groups"]
               for r in g["rules"] if "record" in r}
    exported["up"] = set()  # Prometheus' own, for every target
    problems = []
    for where, expr in expressions():
        selectors, grouped = uses(expr)
        available = set(TARGET_LABELS)
        for metric, labels in selectors.items():
            if ":" in metric:
                if metric not in records:
                    problems.append(f"{where}: no rule records {metric}")
                continue
            if metric not in exported:
                problems.append(f"{where}: no service exports {metric}")
                continue
            available |= exported[metric]
            unknown = labels - exported[metric] - TARGET_LABELS
            if unknown:
                problems.append(f"{where}: {metric} has no label {sorted(unknown)}")
        if not any(":" in m for m in selectors):
            unknown = grouped - available
            if unknown:
                problems.append(f"{where}: groups by {sorted(unknown)}, which none of its series has")
    assert not problems, "\n".join(problems)
    assert "process_resident_memory_bytes" in exported and "agora_build_info" in exported


def get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def wait_for(what: str, condition, bound: float = BOUND_SECONDS):
    deadline = time.monotonic() + bound
    while True:
        try:
            value = condition()
        except (urllib.error.URLError, ConnectionError):
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {bound} s: {what}"
        time.sleep(0.2)


def test_a_real_prometheus_raises_service_down_when_catalog_stops_and_resolves_it(running, tmp_path):
    prometheus = observe.PROMETHEUS
    assert prometheus.exists(), "tools/install-prometheus.sh installs Prometheus (make observe-check does it)"
    # The shipped rules, with every `for:` shortened to two seconds.
    rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    targets = {name: [running.system.admins[name]] for name in SERVICES}
    (tmp_path / "prometheus.yml").write_text(observe.config(targets, [tmp_path / "rules.yaml"], interval="1s"))
    address = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "prometheus.log", "w")
    server = subprocess.Popen([str(prometheus), f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={address}"],
                              stdout=log, stderr=subprocess.STDOUT)
    api = f"http://{address}/api/v1"

    def up() -> dict:
        answer = get(f"{api}/query?query=up")["data"]["result"]
        return {r["metric"]["service"]: r["value"][1] for r in answer}

    def service_down() -> list:
        return [a for a in get(f"{api}/alerts")["data"]["alerts"] if a["labels"]["alertname"] == "AgoraServiceDown"]

    try:
        wait_for("Prometheus scrapes the four services", lambda: up() == {s: "1" for s in SERVICES})
        assert service_down() == []

        running.stop("catalog")
        seen = set()

        def firing():
            alerts = service_down()
            seen.update(a["state"] for a in alerts)
            assert all(a["labels"]["service"] == "catalog" for a in alerts), alerts
            return [a for a in alerts if a["state"] == "firing"]

        [alert] = wait_for("AgoraServiceDown fires for catalog", firing)
        assert alert["labels"]["severity"] == "page"
        assert "catalog" in alert["annotations"]["summary"]
        assert "pending" in seen, "the alert is pending before it fires"

        running.start("catalog")
        wait_for("AgoraServiceDown resolves once catalog is back", lambda: service_down() == [])
        assert up()["catalog"] == "1"
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
