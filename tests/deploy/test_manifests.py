"""The Kubernetes manifests under deploy/, checked offline: they are what
tools/deploy_manifests.py writes from the context map; each overlay renders
with kustomize and passes kubernetes-validate in strict mode; the
NetworkPolicies admit exactly the callers proto/context_map.json declares;
every AGORA_* variable set is one the services read (docs/CONFIGURATION.md)
and the ones a service cannot start without are set. Run by
`make deploy-check`."""

import json
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
REQUIRED = {"AGORA_TLS_CERT_FILE", "AGORA_TLS_KEY_FILE", "AGORA_JWKS_FILE", "AGORA_JWT_ISSUER",
            "AGORA_JWT_AUDIENCE", "AGORA_DATABASE_URL"}


def rendered(overlay: str) -> list:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed"
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
                         capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_the_generated_manifests_are_current():
    for path, text in deploy_manifests.render().items():
        on_disk = (ROOT / "deploy" / path).read_text()
        assert on_disk == text, f"deploy/{path} is not what tools/deploy_manifests.py writes: make deploy-manifests"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_validates_strictly(overlay, tmp_path):
    docs = rendered(overlay)
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run([str(validate), "--strict", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "Service", "ServiceAccount", "NetworkPolicy", "ConfigMap"} <= kinds


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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_is_one_a_service_reads_and_the_required_ones_are_set(overlay):
    documented = set(re.findall(r"`(AGORA_[A-Z0-9_]+)`", (ROOT / "docs" / "CONFIGURATION.md").read_text()))
    docs = rendered(overlay)
    config = {}
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("agora-"):
            config.update(d.get("data", {}))
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        container = d["spec"]["template"]["spec"]["containers"][0]
        names = {e["name"] for e in container.get("env", [])}
        if any("configMapRef" in s for s in container.get("envFrom", [])):
            names |= {k for k in config if k.startswith("AGORA_")}
        unknown = sorted(n for n in names if n not in documented)
        assert not unknown, f"{d['metadata']['name']}: variables no service reads: {unknown}"
        missing = sorted(REQUIRED - names)
        assert not missing, f"{d['metadata']['name']}: required variables not set: {missing}"
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]
        pod = d["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"]
        assert all(container[p]["grpc"]["port"] == next(x["containerPort"] for x in container["ports"]
                                                        if x["name"] == "admin")
                   for p in ("startupProbe", "readinessProbe", "livenessProbe"))
