"""The monitoring of Agora, written by `make deploy-manifests` beside the
manifests: the Prometheus rules (SLO recording rules, multi-window
multi-burn-rate alerts as in Google's SRE workbook, and the operational
alerts), the Kubernetes scrape job, the Prometheus Operator component and a
Grafana dashboard per service. deploy/monitoring/rules.test.yaml (promtool
unit tests) and tests/monitoring (the names against four real services, the
alerts through a real Prometheus) check what is written here.

Every series is selected by the labels the scrape adds: `job="agora"` and
`service`: one a context of proto/context_map.json (tools/contexts.py)."""

import json

import contexts

SERVICES = list(contexts.contexts())
# Each alert's entry in the runbook; prefix it with where your copy of the docs is served.
RUNBOOK = "docs/OPERATIONS.md#"

# The objectives, over 30 days.
AVAILABILITY = 0.999  # calls not failed by the server
LATENCY_SECONDS = "0.1"  # a bucket edge of grpc_server_handling_seconds
LATENCY = 0.99  # of unary calls answered within LATENCY_SECONDS

# Codes that are the server's fault; every other code (OK, and the caller's
# mistakes: INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) is a good call.
SERVER_FAULTS = "UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|RESOURCE_EXHAUSTED|INTERNAL|UNAVAILABLE|DATA_LOSS"
# Application calls: health and reflection are not part of the objective.
APPLICATION = 'job="agora", grpc_service=~"agora\\\\..+"'
# Streams last as long as the client reads: no latency objective.
UNARY = APPLICATION + ', grpc_method!~"Watch.+|StreamProducts"'
WINDOWS = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]
# (long window, short window, burn rate, severity): the SRE workbook's table.
BURNS = [("1h", "5m", 14.4, "page"), ("6h", "30m", 6, "page"),
         ("1d", "2h", 3, "ticket"), ("3d", "6h", 1, "ticket")]


def recording_rules() -> list:
    rules = []
    for w in WINDOWS:
        rules += [
            {"record": f"agora:grpc_server_errors:ratio_rate{w}",
             "expr": f'sum by (service) (rate(grpc_server_handled_total{{{APPLICATION}, grpc_code=~"{SERVER_FAULTS}"}}[{w}]))\n'
                     f"/\nsum by (service) (rate(grpc_server_handled_total{{{APPLICATION}}}[{w}]))"},
            {"record": f"agora:grpc_server_slow:ratio_rate{w}",
             "expr": f'1 - (\n  sum by (service) (rate(grpc_server_handling_seconds_bucket{{{UNARY}, le="{LATENCY_SECONDS}"}}[{w}]))\n'
                     f"  /\n  sum by (service) (rate(grpc_server_handling_seconds_count{{{UNARY}}}[{w}]))\n)"},
        ]
    return rules


def slo_alerts() -> list:
    alerts = []
    for kind, record, objective, what in [
        ("Availability", "grpc_server_errors", AVAILABILITY, "calls failed by the server"),
        ("Latency", "grpc_server_slow", LATENCY, f"unary calls slower than {float(LATENCY_SECONDS) * 1000:g} ms"),
    ]:
        budget = round(1 - objective, 6)
        for long, short, burn, severity in BURNS:
            threshold = round(burn * budget, 6)
            alerts.append({
                "alert": f"Agora{kind}BudgetBurn",
                "expr": f"agora:{record}:ratio_rate{long} > {threshold}\nand\nagora:{record}:ratio_rate{short} > {threshold}",
                "labels": {"severity": severity, "window": long},
                "annotations": {
                    "summary": f"{{{{ $labels.service }}}}: {what} burn the 30-day error budget "
                               f"{burn:g}x as fast as allowed (over {long} and {short})",
                    "runbook_url": RUNBOOK + f"agora{kind.lower()}budgetburn",
                },
            })
    return alerts


def operational_alerts() -> list:
    def alert(name, expr, duration, severity, summary):
        return {"alert": name, "expr": expr, "for": duration, "labels": {"severity": severity},
                "annotations": {"summary": summary, "runbook_url": RUNBOOK + name.lower()}}

    return [
        alert("AgoraServiceDown", 'up{job="agora"} == 0', "1m", "page",
              "{{ $labels.service }} at {{ $labels.instance }} cannot be scraped"),
        alert("AgoraNotServing", 'agora_health_serving{job="agora"} == 0', "2m", "page",
              "{{ $labels.service }} at {{ $labels.instance }} is NOT_SERVING: its database does not answer"),
        alert("AgoraLoadShed", 'sum by (service) (rate(agora_grpc_server_shed_total{job="agora"}[5m])) > 0', "10m",
              "ticket", "{{ $labels.service }} turns calls away at its concurrency limit"),
        alert("AgoraCircuitBreakerOpen",
              'sum by (service, circuitbreaker) (rate(circuitbreaker_calls_total{job="agora", outcome="rejected"}[5m])) > 0',
              "2m", "ticket", "{{ $labels.service }} fails calls to {{ $labels.circuitbreaker }} at once: its breaker is open"),
        alert("AgoraFallbackServed", 'sum by (service) (rate(agora_offers_fallback_total{job="agora"}[5m])) > 0', "5m",
              "ticket", "{{ $labels.service }} answers from its fallback: its database fails"),
        alert("AgoraRetryBudgetExhausted",
              'sum by (service, upstream) (rate(agora_upstream_retries_refused_total{job="agora"}[5m])) > 0', "5m",
              "ticket", "{{ $labels.service }} has spent its retry budget on {{ $labels.upstream }}"),
        alert("AgoraFeedLagging", 'max by (service, feed) (agora_feed_lag_events{job="agora"}) > 100', "10m", "ticket",
              "{{ $labels.service }} is {{ $value }} events behind the {{ $labels.feed }} feed"),
        alert("AgoraFeedDisconnected", 'max by (service, feed) (agora_feed_connected{job="agora"}) == 0', "5m",
              "ticket", "no replica of {{ $labels.service }} follows the {{ $labels.feed }} feed"),
        # The feeds on NATS JetStream (AGORA_EVENTS=jetstream).
        alert("AgoraRelayLagging", 'max by (service, stream) (agora_events_relay_lag_events{job="agora"}) > 100',
              "10m", "ticket",
              "{{ $labels.service }} has {{ $value }} events not yet relayed to the stream {{ $labels.stream }}"),
        alert("AgoraRelayStopped", 'max by (service, stream) (agora_events_relay_leader{job="agora"}) == 0', "5m",
              "ticket", "no replica of {{ $labels.service }} relays its outbox to the stream {{ $labels.stream }}"),
        alert("AgoraPartitionLagging",
              'max by (service, feed, partition) (agora_events_lag_events{job="agora"}) > 100', "10m", "ticket",
              "{{ $labels.service }} is {{ $value }} events behind partition {{ $labels.partition }} of the "
              "{{ $labels.feed }} stream"),
        alert("AgoraPartitionUnapplied",
              'max by (service, feed, partition) (agora_events_partition_owned{job="agora"}) == 0', "5m", "ticket",
              "no replica of {{ $labels.service }} applies partition {{ $labels.partition }} of the "
              "{{ $labels.feed }} stream"),
    ]


def rules() -> dict:
    return {"groups": [
        {"name": "agora-slo-recording", "rules": recording_rules()},
        {"name": "agora-slo-alerts", "rules": slo_alerts()},
        {"name": "agora-alerts", "rules": operational_alerts()},
    ]}


def kubernetes_scrape_config() -> dict:
    """A Prometheus scrape job that finds every Agora pod (kubernetes_sd) and
    scrapes its admin port; `service` is the pod's app.kubernetes.io/name."""
    meta = "__meta_kubernetes_pod_"
    return {"scrape_configs": [{
        "job_name": "agora",
        "scrape_interval": "15s",
        "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": ["agora"]}}],
        "relabel_configs": [
            {"source_labels": [f"{meta}label_app_kubernetes_io_part_of"], "regex": "agora", "action": "keep"},
            {"source_labels": [f"{meta}container_port_name"], "regex": "admin", "action": "keep"},
            {"source_labels": [f"{meta}label_app_kubernetes_io_name"], "target_label": "service"},
            {"source_labels": [f"{meta}name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        ],
    }]}


def pod_monitor() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": "agora", "namespace": "agora", "labels": {"app.kubernetes.io/part-of": "agora"}},
        "spec": {
            # job="agora", from the pods' app.kubernetes.io/part-of label.
            "jobLabel": "app.kubernetes.io/part-of",
            "selector": {"matchLabels": {"app.kubernetes.io/part-of": "agora"}},
            "podMetricsEndpoints": [{
                "port": "admin", "path": "/metrics", "interval": "15s",
                "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                                 "targetLabel": "service"}],
            }],
        },
    }


def prometheus_rule() -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "agora", "namespace": "agora", "labels": {"app.kubernetes.io/part-of": "agora"}},
            "spec": rules()}


def panel(title: str, exprs: list, unit: str, x: int, y: int) -> dict:
    return {
        "type": "timeseries", "title": title, "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "expr": e, "legendFormat": legend}
                    for i, (e, legend) in enumerate(exprs)],
    }


def dashboard(service: str) -> dict:
    sel = f'job="agora", service="{service}"'
    app = f'{sel}, grpc_service=~"agora\\\\..+"'
    panels = [
        ("Calls per second, by method", [(f"sum by (grpc_method) (rate(grpc_server_handled_total{{{app}}}[5m]))",
                                          "{{grpc_method}}")], "reqps"),
        ("Errors per second, by method and code",
         [(f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{app}, grpc_code!="OK"}}[5m]))',
           "{{grpc_method}} {{grpc_code}}")], "reqps"),
        ("Duration p50 and p99, by method",
         [(f"histogram_quantile(0.5, sum by (grpc_method, le) (rate(grpc_server_handling_seconds_bucket{{{app}}}[5m])))",
           "p50 {{grpc_method}}"),
          (f"histogram_quantile(0.99, sum by (grpc_method, le) (rate(grpc_server_handling_seconds_bucket{{{app}}}[5m])))",
           "p99 {{grpc_method}}")], "s"),
        ("Error budget: server errors and slow calls (ratio, 1h)",
         [(f'agora:grpc_server_errors:ratio_rate1h{{service="{service}"}}', "errors"),
          (f'agora:grpc_server_slow:ratio_rate1h{{service="{service}"}}', "slow")], "percentunit"),
        ("Saturation: calls in flight and shed",
         [(f"sum by (pod) (grpc_server_in_flight{{{sel}}})", "in flight {{pod}}"),
          (f"sum by (pod) (rate(agora_grpc_server_shed_total{{{sel}}}[5m]))", "shed/s {{pod}}")], "short"),
        ("Database pool: connections and idle",
         [(f"sum by (pod) (agora_db_pool_connections{{{sel}}})", "open {{pod}}"),
          (f"sum by (pod) (agora_db_pool_idle_connections{{{sel}}})", "idle {{pod}}")], "short"),
        ("Health: SERVING (1) by replica", [(f"agora_health_serving{{{sel}}}", "{{pod}}")], "short"),
        ("Database: breaker open (1), calls refused at once per second",
         [(f"max by (pod) (agora_db_breaker_open{{{sel}}})", "open {{pod}}"),
          (f"sum by (pod) (rate(agora_db_fast_failures_total{{{sel}}}[5m]))", "refused/s {{pod}}")], "short"),
        ("Process: CPU and resident memory",
         [(f"rate(process_cpu_seconds_total{{{sel}}}[5m])", "cpu {{pod}}"),
          (f"process_resident_memory_bytes{{{sel}}}", "rss {{pod}}")], "short"),
    ]
    if service in contexts.publishers():
        panels += [
            ("Relay to JetStream: events not yet relayed, leader (1), relayed per second",
             [(f"max by (stream) (agora_events_relay_lag_events{{{sel}}})", "lag {{stream}}"),
              (f"max by (stream) (agora_events_relay_leader{{{sel}}})", "leader {{stream}}"),
              (f"sum by (stream) (rate(agora_events_relayed_total{{{sel}}}[5m]))", "relayed/s {{stream}}")],
             "short"),
        ]
    if service in contexts.followers():
        panels += [
            ("Feeds: lag in events, connected (1)",
             [(f"max by (feed) (agora_feed_lag_events{{{sel}}})", "lag {{feed}}"),
              (f"max by (feed) (agora_feed_connected{{{sel}}})", "connected {{feed}}")], "short"),
            ("Feeds on JetStream: lag by partition, partitions applied by each replica",
             [(f"max by (feed, partition) (agora_events_lag_events{{{sel}}})", "lag {{feed}}/{{partition}}"),
              (f"sum by (feed, pod) (agora_events_partition_owned{{{sel}}})", "applied {{feed}} {{pod}}")],
             "short"),
            ("Upstreams: breaker rejections and refused retries per second",
             [(f'sum by (circuitbreaker) (rate(circuitbreaker_calls_total{{{sel}, outcome="rejected"}}[5m]))',
               "rejected {{circuitbreaker}}"),
              (f"sum by (upstream) (rate(agora_upstream_retries_refused_total{{{sel}}}[5m]))",
               "retries refused {{upstream}}")], "reqps"),
        ]
    return {
        "uid": f"agora-{service}", "title": f"Agora {service}", "schemaVersion": 39, "version": 1,
        "tags": ["agora"], "timezone": "utc", "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": [panel(title, exprs, unit, 12 * (i % 2), 8 * (i // 2))
                   for i, (title, exprs, unit) in enumerate(panels)],
    }


def files(dump) -> dict:
    """Every file this module writes below deploy/, by path, as text."""
    out = {
        "monitoring/rules.yaml": dump([rules()]),
        "monitoring/prometheus-kubernetes.yaml": dump([kubernetes_scrape_config()]),
        "components/prometheus-operator/monitoring.yaml": dump([pod_monitor(), prometheus_rule()]),
        "components/prometheus-operator/kustomization.yaml": dump([{
            "apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
            "resources": ["monitoring.yaml"]}]),
    }
    for service in SERVICES:
        out[f"monitoring/dashboards/agora-{service}.json"] = json.dumps(dashboard(service), indent=2) + "\n"
    return out
