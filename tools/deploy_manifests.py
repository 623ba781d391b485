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
namespace (and the kubelet's probes, which NetworkPolicies do not stop).

Optional components: cert-manager Certificates for the services' TLS
Secrets, a Gateway API GRPCRoute for the public APIs (every RPC of the
protos but the change feeds, which the map reserves for services), and the
change feeds on NATS JetStream."""

import copy
import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contexts  # noqa: E402
import monitoring  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# name: (gRPC port, admin port); the services' own defaults, as the context
# map declares them.
SERVICES = contexts.ports()
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
# NATS, as its own Helm chart installs it (components/jetstream): the
# Service nats in the namespace nats, clients on 4222.
NATS_NAMESPACE = "nats"
NATS_URL = f"tls://nats.{NATS_NAMESPACE}.svc.cluster.local:4222"
# The gRPC service each context serves, by its proto file.
PROTOS = {name: contexts.proto(name) for name in SERVICES}
TRUST_DOMAIN = "agora.local"

# Requests and limits, from `make bench` (BENCHMARKS.md) on one core:
# - memory: 15 MiB idle; 19 to 25 MiB serving flat out (GetProduct over
#   TLS, CreateOffer, four full-table streams); 48 MiB paging deep into a
#   million products (SQLite's page cache). Request 64Mi (the largest
#   peak with room); limit 128Mi, which only a fault reaches (the pod is
#   restarted rather than the node starved).
# - CPU: about 105 us of server CPU per GetProduct over TLS with a token,
#   9,400 calls/s on a whole core. Request 250m (about 2,300 calls/s);
#   the HPA adds replicas at 70 % of it. No CPU limit: throttling a gRPC
#   server turns spare node CPU into tail latency.
RESOURCES = {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}

# What every service reads, as one ConfigMap an operator edits (the
# services' own defaults, but JSON logs); kustomize names it with a hash of
# its content, so a change rolls the pods.
SHARED = {
    "AGORA_LOG": "info",
    "AGORA_LOG_FORMAT": "json",
    "AGORA_TRUST_DOMAIN": TRUST_DOMAIN,
    "AGORA_JWT_ISSUER": "https://agora.local/dev-issuer",
    "AGORA_JWT_AUDIENCE": "agora",
    "AGORA_JWT_LEEWAY_S": "30",
    "AGORA_SECURITY_RELOAD_MS": "10000",
    "AGORA_REQUEST_TIMEOUT_MS": "10000",
    "AGORA_CONCURRENCY_LIMIT": "256",
    "AGORA_ADMISSION_WAIT_MS": "50",
    "AGORA_ADMISSION_QUEUE": "1024",
    "AGORA_MAX_MESSAGE_BYTES": "4194304",
    "AGORA_DRAIN_DELAY_MS": "5000",
    "AGORA_SHUTDOWN_TIMEOUT_MS": "10000",
    "AGORA_DB_MAX_CONNECTIONS": "8",
    "AGORA_DB_ACQUIRE_TIMEOUT_MS": "2000",
    "AGORA_DB_PROBE_INTERVAL_MS": "1000",
    "AGORA_OUTBOX_POLL_MS": "500",
    "AGORA_OUTBOX_RETENTION_HOURS": "168",
    "AGORA_MAX_CONNECTIONS": "1024",
    "AGORA_MAX_CONNECTIONS_PER_PEER": "256",
    "AGORA_HANDSHAKE_TIMEOUT_MS": "10000",
    "AGORA_IDLE_TIMEOUT_MS": "300000",
    "AGORA_MAX_CONNECTION_AGE_MS": "1800000",
    "AGORA_MAX_CONNECTION_AGE_GRACE_MS": "30000",
    "AGORA_KEEPALIVE_INTERVAL_MS": "30000",
    "AGORA_KEEPALIVE_TIMEOUT_MS": "10000",
    "AGORA_MAX_CONCURRENT_STREAMS": "256",
    "AGORA_STREAM_LIMIT": "512",
    "AGORA_STREAM_LIMIT_PER_CONNECTION": "32",
    "AGORA_STREAM_STALL_TIMEOUT_MS": "60000",
    "AGORA_MAX_HEADER_BYTES": "16384",
}
# What the downstreams (offers, shopping) read about calling upstreams.
UPSTREAM = {
    "AGORA_UPSTREAM_RESOLVE_MS": "5000",
    "AGORA_UPSTREAM_CONNECT_TIMEOUT_MS": "1000",
    "AGORA_UPSTREAM_CALL_TIMEOUT_MS": "2000",
    "AGORA_UPSTREAM_MAX_ATTEMPTS": "3",
    "AGORA_UPSTREAM_BACKOFF_MIN_MS": "10",
    "AGORA_UPSTREAM_BACKOFF_MAX_MS": "200",
    "AGORA_UPSTREAM_RETRY_RATIO": "0.2",
    "AGORA_UPSTREAM_BREAKER_FAILURES": "5",
    "AGORA_UPSTREAM_BREAKER_OPEN_MS": "2000",
}
# Policy checks (checkov) that do not apply, each with its reason.
CHECKOV_SKIPS = {
    "CKV_K8S_11": "no CPU limit on purpose: CFS throttling of a gRPC server turns spare node CPU into tail "
                  "latency; the request sizes scheduling and the HPA",
    "CKV_K8S_15": "IfNotPresent: images are immutable (a digest at release, set by the overlay's images: "
                  "transformer), and dev clusters run images loaded locally (kind load)",
    "CKV_K8S_43": "the digest is known only once the image is pushed: a release pins it with kustomize "
                  "edit set image (docs/DEPLOYMENT.md)",
}

# Variables the services read that the manifests leave unset, and why.
NOT_SET = {
    "AGORA_INSECURE": "secure by default: never in a deployment",
    "AGORA_SERVICE_TOKEN_FILE": "services prove who they are with their certificates (mTLS is on everywhere)",
    "AGORA_OFFERS_FALLBACK": "offers reads its fallback from a file instead (ConfigMap offers-fallback)",
    "AGORA_CORS_ORIGINS": "no web page calls the services by default; a deployment whose storefront is "
                          "served from another origin names it in an overlay (docs/DEPLOYMENT.md)",
    "AGORA_BUILD_COMMIT": "read when the binary is built (make image names the commit), not when it runs",
    "AGORA_SQLITE_SYNCHRONOUS": "SQLite's default (normal) keeps every acknowledged write through a crash of the "
                                "pod, which is what the dev overlay needs; production runs on PostgreSQL "
                                "(docs/OPERATIONS.md, durability of writes)",
    "AGORA_EVENTS": "the feeds are the producers' Watch streams unless the component jetstream sets it",
    "AGORA_NATS_URL": "set by the component jetstream",
    "AGORA_NATS_CA_FILE": "set by the component jetstream",
    "AGORA_NATS_CREDS_FILE": "set by the component jetstream",
    "AGORA_EVENTS_PARTITIONS": "set by the component jetstream",
    "AGORA_EVENTS_REPLICAS": "set by the component jetstream",
    "AGORA_NATS_CERT_FILE": "the component jetstream names each service to NATS by a credentials file; a client "
                            "certificate is for a NATS that maps certificates to users",
    "AGORA_NATS_KEY_FILE": "see AGORA_NATS_CERT_FILE",
    "AGORA_NATS_CONNECT_TIMEOUT_MS": "the default (5 s) suits a NATS in the cluster",
    "AGORA_REQUIRE_POSTGRES": "tests only",
    "AGORA_TEST_NATS": "tests only",
    "AGORA_TEST_POSTGRES_URL": "tests only",
    "AGORA_TEST_LOG": "tests only",
    "AGORA_SKIP_LOG": "tests only",
}


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
    env_from = [{"configMapRef": {"name": "agora"}}]
    if upstreams(name, relations):
        env.append({"name": "AGORA_UPSTREAM_CA_FILE", "value": "/run/agora/tls/ca.crt"})
        env_from.append({"configMapRef": {"name": "agora-upstream"}})
    mounts = [
        {"name": "tls", "mountPath": "/run/agora/tls", "readOnly": True},
        {"name": "jwks", "mountPath": "/run/agora/jwks", "readOnly": True},
    ]
    volumes = [
        {"name": "tls", "secret": {"secretName": f"{name}-tls"}},
        {"name": "jwks", "configMap": {"name": "agora-jwks"}},
    ]
    if name == "offers":
        # The default offers of a database failure: none until an operator
        # edits the ConfigMap (docs/OPERATIONS.md).
        env.append({"name": "AGORA_OFFERS_FALLBACK_FILE", "value": "/run/agora/fallback/offers.json"})
        mounts.append({"name": "fallback", "mountPath": "/run/agora/fallback", "readOnly": True})
        volumes.append({"name": "fallback", "configMap": {"name": "offers-fallback"}})
    probe = {"grpc": {"port": admin}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(name),
                     "annotations": {f"checkov.io/skip{i}": f"{check}={reason}"
                                     for i, (check, reason) in enumerate(CHECKOV_SKIPS.items(), 1)}},
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
                        "envFrom": env_from,
                        "env": env,
                        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 60},
                        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
                        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
                        "resources": copy.deepcopy(RESOURCES),
                        "securityContext": {
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
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
    """production: PostgreSQL through a Secret (a file, not an environment
    variable), three replicas spread over nodes and zones, an HPA, a PDB."""
    select = {"matchLabels": {"app.kubernetes.io/name": name}}
    spread = [{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": select}
              for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")]
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
         "spec": {"replicas": 3, "template": {"spec": {
             "topologySpreadConstraints": spread,
             "containers": [{"name": name,
                             "env": [{"name": "AGORA_DATABASE_URL_FILE", "value": "/run/agora/database/url"}],
                             "volumeMounts": [{"name": "database", "mountPath": "/run/agora/database",
                                               "readOnly": True}]}],
             "volumes": [{"name": "database", "secret": {"secretName": f"{name}-database"}}]}}}},
        {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name, "labels": labels(name)},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                  "minReplicas": 3, "maxReplicas": 12,
                  "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                                                "target": {"type": "Utilization", "averageUtilization": 70}}}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels(name)},
         "spec": {"maxUnavailable": 1, "selector": select}},
    ]


def jetstream_patch(name: str) -> dict:
    """components/jetstream: the service's feeds on NATS, its user's credentials and NATS's CA from the
    Secret <service>-nats."""
    env = [
        {"name": "AGORA_EVENTS", "value": "jetstream"},
        {"name": "AGORA_NATS_URL", "value": NATS_URL},
        {"name": "AGORA_NATS_CA_FILE", "value": "/run/agora/nats/ca.crt"},
        {"name": "AGORA_NATS_CREDS_FILE", "value": "/run/agora/nats/nats.creds"},
        # A stream a producer creates: 8 partitions, 3 copies on NATS's cluster.
        {"name": "AGORA_EVENTS_PARTITIONS", "value": "8"},
        {"name": "AGORA_EVENTS_REPLICAS", "value": "3"},
    ]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"template": {"spec": {
                "containers": [{"name": name, "env": env,
                                "volumeMounts": [{"name": "nats", "mountPath": "/run/agora/nats", "readOnly": True}]}],
                "volumes": [{"name": "nats", "secret": {"secretName": f"{name}-nats"}}]}}}}


def jetstream_egress(relations: list) -> dict:
    """components/jetstream: the pods' egress as an allow-list, NATS in it. Egress is open in the base; a
    policy that lets the pods reach NATS makes every other destination closed unless listed, so the list
    holds what they reach: DNS, the upstreams' gRPC ports in the namespace, PostgreSQL (5432) and an OTLP
    collector (4317) wherever they are, and NATS's client port in its namespace."""
    upstream_ports = sorted({SERVICES[r["upstream"]][0] for r in relations})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "agora-egress", "labels": PART_OF},
        "spec": {
            "podSelector": {"matchLabels": PART_OF},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                 "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"to": [{"podSelector": {"matchLabels": PART_OF}}],
                 "ports": [{"port": p, "protocol": "TCP"} for p in upstream_ports]},
                {"ports": [{"port": 5432, "protocol": "TCP"}, {"port": 4317, "protocol": "TCP"}]},
                {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NATS_NAMESPACE}},
                         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "nats"}}}],
                 "ports": [{"port": 4222, "protocol": "TCP"}]},
            ],
        },
    }


def base_kustomization() -> dict:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "agora",
        "resources": ["namespace.yaml", *(f"{name}.yaml" for name in SERVICES)],
        "configMapGenerator": [
            {"name": "agora", "literals": [f"{k}={v}" for k, v in SHARED.items()]},
            {"name": "agora-upstream", "literals": [f"{k}={v}" for k, v in UPSTREAM.items()]},
            {"name": "offers-fallback", "literals": ["offers.json=[]"]},
        ],
    }


def rpcs(name: str) -> list:
    """The RPCs of the context's service, in the proto's order: (service, [method])."""
    text = (ROOT / "proto" / "agora" / PROTOS[name]).read_text()
    package = re.search(r"^package ([\w.]+);", text, re.M).group(1)
    service = re.search(r"^service (\w+) \{", text, re.M).group(1)
    return f"{package}.{service}", re.findall(r"^\s*rpc (\w+)\(", text, re.M)


def certificate(name: str) -> dict:
    """The service's certificate, as docs/SECURITY.md asks: its SPIFFE ID,
    its DNS names, server and client auth; cert-manager keeps it renewed in
    the Secret the Deployment mounts, and the service reloads it."""
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "secretName": f"{name}-tls",
            "duration": "2160h",
            "renewBefore": "720h",
            "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "uris": [f"spiffe://{TRUST_DOMAIN}/service/{name}"],
            "dnsNames": [name, f"{name}.agora.svc", f"{name}.agora.svc.cluster.local"],
            "issuerRef": {"name": "agora-ca", "kind": "Issuer", "group": "cert-manager.io"},
        },
    }


def certificate_authority() -> list:
    """A CA of Agora's own, bootstrapped by a self-signed issuer: the CA
    issuer signs every service's certificate and puts the CA in each
    Secret's ca.crt, which the services trust for mTLS."""
    ca = {"app.kubernetes.io/name": "agora-ca", **PART_OF}
    return [
        {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "agora-selfsigned", "labels": ca},
         "spec": {"selfSigned": {}}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "agora-ca", "labels": ca},
         "spec": {"isCA": True, "commonName": "Agora services CA", "secretName": "agora-ca", "duration": "87600h",
                  "privateKey": {"algorithm": "ECDSA", "size": 256},
                  "issuerRef": {"name": "agora-selfsigned", "kind": "Issuer", "group": "cert-manager.io"}}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "agora-ca", "labels": ca},
         "spec": {"ca": {"secretName": "agora-ca"}}},
    ]


def grpc_route(name: str, grpc: int, relations: list) -> list:
    """The public API of one context through the gateway: one GRPCRoute
    that matches each public RPC (the change feeds stay inside), and a
    BackendTLSPolicy so that the gateway speaks TLS to the service and
    checks its certificate. A route balances calls, where a Service would
    balance connections."""
    service, methods = rpcs(name)
    feeds = {r["feed"] for r in relations if r["upstream"] == name}
    public = [m for m in methods if m not in feeds]
    return [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
         "metadata": {"name": name, "labels": labels(name)},
         "spec": {"parentRefs": [{"name": "agora", "namespace": GATEWAY_NAMESPACE}],
                  "rules": [{"matches": [{"method": {"type": "Exact", "service": service, "method": m}} for m in public],
                             "backendRefs": [{"name": name, "port": grpc}]}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
         "metadata": {"name": name, "labels": labels(name)},
         "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": name}],
                  "validation": {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "agora-ca"}],
                                 "hostname": f"{name}.agora.svc.cluster.local"}}},
    ]


class Dumper(yaml.SafeDumper):
    """YAML without anchors and aliases: each manifest reads on its own."""

    def ignore_aliases(self, data):
        return True


Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


# What a reader of a generated file needs to know, by its path.
NOTES = {
    "base/kustomization.yaml": """\
# Every service, in the namespace agora. An overlay adds the database
# (dev: SQLite on a volume; production: PostgreSQL) and the replicas.
#
# Provided by the operator (or by the component components/cert-manager):
#   Secret <service>-tls    tls.crt, tls.key (the service's certificate,
#                           serverAuth and clientAuth, SPIFFE ID
#                           spiffe://agora.local/service/<service>) and
#                           ca.crt (the CA of every service certificate)
# Provided by the operator:
#   ConfigMap agora-jwks    jwks.json, the token issuer's public keys
# The ConfigMaps below hold every other setting (docs/CONFIGURATION.md);
# edit them in an overlay (configMapGenerator with behavior: merge).
""",
    "overlays/dev/kustomization.yaml": """\
# dev: one replica of each service, its SQLite file on a volume of its own.
# A Deployment with the Recreate strategy rather than a StatefulSet: one
# pod, one claim, and an update stops the old pod before the new one opens
# the file (a SQLite file belongs to one process); nothing here needs a
# StatefulSet's stable names or per-replica claims.
""",
    "overlays/production/kustomization.yaml": """\
# production: PostgreSQL per context through a Secret (<service>-database,
# key url, e.g. postgres://agora@catalog-db/agora?sslmode=verify-full&sslrootcert=...),
# three replicas each spread over nodes and zones, an HPA on CPU and a
# PodDisruptionBudget.
""",
    "components/cert-manager/kustomization.yaml": """\
# Optional: cert-manager issues and renews every service's certificate into
# the Secret <service>-tls, signed by a CA of Agora's own (bootstrapped by a
# self-signed Issuer; replace the Issuer agora-ca to use your own CA). The
# services re-read the files when the Secret changes: no restart.
""",
    "components/jetstream/kustomization.yaml": """\
# Optional: the change feeds on NATS JetStream (AGORA_EVENTS=jetstream):
# the upstreams relay their outboxes to their streams, the downstreams
# share the streams' partitions. Expects NATS with JetStream, run
# by its own Helm chart or operator (docs/DEPLOYMENT.md): the Service nats
# in the namespace nats, TLS on 4222, and per service a Secret
# <service>-nats in the namespace agora with ca.crt (NATS's CA) and
# nats.creds (the service's NATS user). It also makes the pods' egress an
# allow-list (agora-egress): DNS, the upstreams, PostgreSQL, OTLP and NATS.
""",
    "components/grpc-route/kustomization.yaml": """\
# Optional: the public APIs through a Gateway API gateway (GRPCRoute): the
# gateway balances calls, where a Service balances connections. Expects a
# Gateway named agora in the namespace agora-gateway whose listener admits
# routes from the namespace agora, a gateway that speaks TLS to backends
# (BackendTLSPolicy), and a ConfigMap agora-ca (key ca.crt: the services' CA)
# in the namespace agora. The change feeds are not routed: services only.
""",
}

HEADER = "# Written by tools/deploy_manifests.py (make deploy-manifests) from proto/context_map.json: do not edit.\n"


def render() -> dict:
    """Every generated file below deploy/, by its path."""
    assert not any("=" in reason for reason in CHECKOV_SKIPS.values()), "checkov splits its skips at ="
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
    for overlay, extra in (("dev", "volumes.yaml"), ("production", "availability.yaml")):
        files[f"overlays/{overlay}/kustomization.yaml"] = [
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
             "resources": ["../../base", extra], "patches": [{"path": f"{name}-patch.yaml"} for name in SERVICES]}]
    files["base/kustomization.yaml"] = [base_kustomization()]
    files["components/cert-manager/certificates.yaml"] = [
        *certificate_authority(), *(certificate(name) for name in SERVICES)]
    files["components/cert-manager/kustomization.yaml"] = [
        {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component", "resources": ["certificates.yaml"]}]
    files["components/grpc-route/routes.yaml"] = [
        doc for name, (grpc, _) in SERVICES.items() for doc in grpc_route(name, grpc, relations)]
    files["components/grpc-route/kustomization.yaml"] = [
        {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component", "resources": ["routes.yaml"]}]
    for name in SERVICES:
        files[f"components/jetstream/{name}-patch.yaml"] = [jetstream_patch(name)]
    files["components/jetstream/egress.yaml"] = [jetstream_egress(relations)]
    files["components/jetstream/kustomization.yaml"] = [
        {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component", "resources": ["egress.yaml"],
         "patches": [{"path": f"{name}-patch.yaml"} for name in SERVICES]}]
    # The base's kustomization puts what it holds in the namespace; what
    # overlays and components add says so itself.
    for path in ("overlays/dev/volumes.yaml", "overlays/production/availability.yaml",
                 "components/cert-manager/certificates.yaml", "components/grpc-route/routes.yaml",
                 "components/jetstream/egress.yaml"):
        for doc in files[path]:
            doc["metadata"] = {"name": doc["metadata"]["name"], "namespace": "agora",
                               **{k: v for k, v in doc["metadata"].items() if k != "name"}}
    out = {path: HEADER + NOTES.get(path, "") + yaml.dump_all(docs, Dumper=Dumper, sort_keys=False)
           for path, docs in files.items()}
    out.update(monitoring.files(lambda docs: HEADER + yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, width=120)))
    return out


def main() -> int:
    for path, text in render().items():
        target = ROOT / "deploy" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
