"""Writes deploy/base from two sources of truth: the services' table below
(names and ports, as tools/lib.sh and each service's ServiceSpec give them)
and proto/context_map.json (who calls whom). `make deploy-manifests`
runs it; tests/deploy checks that deploy/base is what it writes, so the
manifests and the NetworkPolicies cannot drift from the map.

Per service: a ServiceAccount without a token, a headless Service (DNS
gives every ready pod, which the downstreams balance over), a Deployment
(probes on the plaintext admin port, a locked-down securityContext) and a
NetworkPolicy that admits on the gRPC port only the callers the map
declares plus the public entry, and on the admin port only the monitoring
namespace (and the kubelet's probes, which NetworkPolicies do not stop)."""

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# name: (gRPC port, admin port); the services' own defaults.
SERVICES = {"catalog": (50051, 9101), "customers": (50052, 9102), "offers": (50053, 9103), "shopping": (50054, 9104)}
PART_OF = {"app.kubernetes.io/part-of": "agora"}
# Drain delay 5 s (AGORA_DRAIN_DELAY_MS) + graceful shutdown bound 10 s
# (AGORA_SHUTDOWN_TIMEOUT_MS) + background tasks 5 s, with 10 s to spare:
# the kubelet's SIGKILL never cuts a drain short.
GRACE_SECONDS = 30
# Who else may connect: the gateway's namespace (the public APIs) and the
# monitoring namespace (the admin port: /metrics). Patch these in an overlay
# where they are named otherwise.
GATEWAY_NAMESPACE = "agora-gateway"
MONITORING_NAMESPACE = "monitoring"


def labels(name: str) -> dict:
    return {"app.kubernetes.io/name": name, **PART_OF}


def callers(name: str, relations: list) -> list:
    return sorted({r["downstream"] for r in relations if r["upstream"] == name})


def upstreams(name: str, relations: list) -> list:
    return sorted({r["upstream"] for r in relations if r["downstream"] == name})


def deployment(name: str, grpc: int, admin: int, relations: list) -> dict:
    env = [
        {"name": "AGORA_GRPC_ADDR", "value": f"0.0.0.0:{grpc}"},
        {"name": "AGORA_ADMIN_ADDR", "value": f"0.0.0.0:{admin}"},
        {"name": "AGORA_TLS_CERT_FILE", "value": "/run/agora/tls/tls.crt"},
        {"name": "AGORA_TLS_KEY_FILE", "value": "/run/agora/tls/tls.key"},
        {"name": "AGORA_TLS_CLIENT_CA_FILE", "value": "/run/agora/tls/ca.crt"},
        {"name": "AGORA_JWKS_FILE", "value": "/run/agora/jwks/jwks.json"},
    ]
    for upstream in upstreams(name, relations):
        port = SERVICES[upstream][0]
        env.append({"name": f"AGORA_{upstream.upper()}_ADDRS",
                    "value": f"https://{upstream}.agora.svc.cluster.local:{port}"})
    if upstreams(name, relations):
        env.append({"name": "AGORA_UPSTREAM_CA_FILE", "value": "/run/agora/tls/ca.crt"})
    probe = {"grpc": {"port": admin}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels(name)},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": name,
                        "image": f"agora-{name}:dev",
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"name": "grpc", "containerPort": grpc}, {"name": "admin", "containerPort": admin}],
                        "envFrom": [{"configMapRef": {"name": "agora"}}],
                        "env": env,
                        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 60},
                        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
                        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
                        "resources": {
                            "requests": {"cpu": "250m", "memory": "64Mi"},
                            "limits": {"memory": "256Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "tls", "mountPath": "/run/agora/tls", "readOnly": True},
                            {"name": "jwks", "mountPath": "/run/agora/jwks", "readOnly": True},
                        ],
                    }],
                    "volumes": [
                        {"name": "tls", "secret": {"secretName": f"{name}-tls"}},
                        {"name": "jwks", "configMap": {"name": "agora-jwks"}},
                    ],
                },
            },
        },
    }


def service(name: str, grpc: int, admin: int) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            # Headless: the name resolves to every ready pod; downstreams balance calls over them.
            "clusterIP": "None",
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "grpc", "port": grpc, "targetPort": "grpc", "appProtocol": "grpc"},
                      {"name": "admin", "port": admin, "targetPort": "admin"}],
        },
    }


def service_account(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "labels": labels(name)},
            "automountServiceAccountToken": False}


def network_policy(name: str, grpc: int, admin: int, relations: list) -> dict:
    allowed = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": c}}} for c in callers(name, relations)]
    # The public entry: the gateway's namespace reaches every public API.
    allowed.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": GATEWAY_NAMESPACE}}})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": allowed, "ports": [{"port": grpc, "protocol": "TCP"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}],
                 "ports": [{"port": admin, "protocol": "TCP"}]},
            ],
        },
    }


def dev_patch(name: str) -> list:
    """dev: the service's SQLite file on a volume of its own, replaced (Recreate), never two pods at once."""
    return [
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"{name}-data", "labels": labels(name)},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"strategy": {"type": "Recreate", "rollingUpdate": None},
                  "template": {"spec": {
                      "containers": [{"name": name,
                                      "env": [{"name": "AGORA_DATABASE_URL", "value": f"sqlite:/data/{name}.db"}],
                                      "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                      "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}}]}}}},
    ]


def production_patch(name: str) -> list:
    """production: PostgreSQL through a Secret, three replicas spread over nodes and zones, an HPA, a PDB."""
    select = {"matchLabels": {"app.kubernetes.io/name": name}}
    spread = [{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": select}
              for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")]
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": 3, "template": {"spec": {
             "topologySpreadConstraints": spread,
             "containers": [{"name": name, "env": [{"name": "AGORA_DATABASE_URL", "valueFrom": {
                 "secretKeyRef": {"name": f"{name}-database", "key": "url"}}}]}]}}}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name, "labels": labels(name)},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                  "minReplicas": 3, "maxReplicas": 12,
                  "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                                                "target": {"type": "Utilization", "averageUtilization": 70}}}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels(name)},
         "spec": {"maxUnavailable": 1, "selector": select}},
    ]


HEADER = "# Written by tools/deploy_manifests.py (make deploy-manifests) from proto/context_map.json: do not edit.\n"


def render() -> dict:
    """Every generated file below deploy/, by its path."""
    relations = json.loads((ROOT / "proto" / "context_map.json").read_text())["relations"]
    files = {}
    dev, production = [], []
    for name, (grpc, admin) in SERVICES.items():
        files[f"base/{name}.yaml"] = [service_account(name), service(name, grpc, admin),
                                      deployment(name, grpc, admin, relations),
                                      network_policy(name, grpc, admin, relations)]
        volume, patch = dev_patch(name)
        dev.append(volume)
        files[f"overlays/dev/{name}-patch.yaml"] = [patch]
        patch, *extra = production_patch(name)
        production.extend(extra)
        files[f"overlays/production/{name}-patch.yaml"] = [patch]
    files["overlays/dev/volumes.yaml"] = dev
    files["overlays/production/availability.yaml"] = production
    return {path: HEADER + yaml.safe_dump_all(docs, sort_keys=False) for path, docs in files.items()}


def main() -> int:
    for path, text in render().items():
        target = ROOT / "deploy" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
