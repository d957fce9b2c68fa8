"""A real Prometheus finds the real pods of a MnistModel through service discovery against this
cluster (the endpoints of the model's Service, labelled as a ServiceMonitor's targets are),
scrapes them, and every dashboard query about the model server returns data.

Debian's Prometheus (2.42) is built without `kubernetes_sd_configs`, so discovery goes through
its generic `http_sd_configs`, fed by `EndpointsDiscovery` here: it reads the Service's
EndpointSlices from the API server on every refresh and hands Prometheus the same
`__meta_kubernetes_*` labels the Kubernetes discovery would, so the relabelling below is the one
the Prometheus operator generates for a ServiceMonitor."""

from __future__ import annotations

import http.server
import json
import math
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from integration.monitoring.monitoring_support import running_prometheus
from realnode.realnode_support import (
    Digits,
    OperatorInstall,
    SteadyLoad,
    apply,
    mnist_model,
    predict,
    routed_cluster_ip,
    wait_condition,
)
from testkit import wait_for

from localcluster import REPO_ROOT, LocalCluster

pytestmark = pytest.mark.slow

DASHBOARD = json.loads((REPO_ROOT / "manifests" / "monitoring" / "mnist-dashboard.json").read_text())


class EndpointsDiscovery:
    """Prometheus HTTP service discovery from a namespace's EndpointSlices, on 127.0.0.1."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        handler = self._handler()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/targets"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EndpointsDiscovery:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def target_groups(self) -> list[dict[str, Any]]:
        ns = self.namespace
        _, services = self.cluster.request("GET", f"/api/v1/namespaces/{ns}/services")
        _, slices = self.cluster.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices")
        by_name = {s["metadata"]["name"]: s for s in services["items"]}
        groups = []
        for endpoint_slice in slices["items"]:
            service = by_name.get(
                endpoint_slice["metadata"].get("labels", {}).get("kubernetes.io/service-name")
            )
            if service is None:
                continue
            service_labels = {
                "__meta_kubernetes_service_label_" + _label_name(k): v
                for k, v in (service["metadata"].get("labels") or {}).items()
            }
            for port in endpoint_slice.get("ports") or []:
                for endpoint in endpoint_slice.get("endpoints") or []:
                    if not endpoint.get("conditions", {}).get("ready"):
                        continue
                    ref = endpoint.get("targetRef") or {}
                    groups.append({
                        "targets": [f"{endpoint['addresses'][0]}:{port['port']}"],
                        "labels": {
                            "__meta_kubernetes_namespace": ns,
                            "__meta_kubernetes_service_name": service["metadata"]["name"],
                            "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                            "__meta_kubernetes_pod_name": ref.get("name", ""),
                            "__meta_kubernetes_pod_node_name": endpoint.get("nodeName", ""),
                            **service_labels,
                        },
                    })  # fmt: skip
        return groups

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        discovery = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(discovery.target_groups()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        return Handler


def _label_name(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


def scrape_config(discovery: EndpointsDiscovery) -> dict[str, Any]:
    """What the Prometheus operator makes of the model's ServiceMonitor: the Service's endpoints
    on its `http` port, with namespace, service, pod and job (= the Service) as target labels."""
    relabel = [
        {"source_labels": ["__meta_kubernetes_service_label_app_kubernetes_io_name"], "regex": "mnist-server",
         "action": "keep"},
        {"source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": "http", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
    ]  # fmt: skip
    return {
        "job_name": "mnist-models",
        "http_sd_configs": [{"url": discovery.url, "refresh_interval": "1s"}],
        "relabel_configs": relabel,
    }


def server_panel_queries(namespace: str, model: str) -> list[tuple[str, str]]:
    """The dashboard's queries about the model server, with its variables set (those about
    kube-state-metrics and the operator are covered by tests/integration/monitoring)."""
    variables = {"$__rate_interval": "30s", "$__range": "5m", "$namespace": namespace, "$model": model}
    queries = []
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if "mnist_server_" not in expr:
                continue
            for name, value in variables.items():
                expr = expr.replace(name, value)
            queries.append((f"{panel['title']}/{target['refId']}", expr))
    return queries


def test_prometheus_scrapes_the_real_pods_and_the_dashboard_shows_them(
    rn_cluster: LocalCluster,
    rn_operator: OperatorInstall,
    rn_namespace: str,
    rn_digits: Digits,
    tmp_path: Path,
) -> None:
    apply(rn_cluster, rn_namespace, mnist_model("digits", "1", replicas=2))
    wait_condition(rn_cluster, rn_namespace, "digits", "True", timeout=180)

    discovery = EndpointsDiscovery(rn_cluster, rn_namespace)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [scrape_config(discovery)],
    }
    with discovery, running_prometheus(config, tmp_path) as prometheus:

        def both_pods_up() -> list[dict[str, Any]] | None:
            targets = [t for t in prometheus.api("targets")["activeTargets"] if t["health"] == "up"]
            return targets if len(targets) == 2 else None

        targets = wait_for(both_pods_up, "both real pods discovered and up", timeout=60)
        assert {t["labels"]["node"] for t in targets} == {"real-node-0"}
        assert {t["labels"]["service"] for t in targets} == {"digits"}

        # Traffic through the Service, good and bad, for as long as the panels are read (their
        # rates look at the last 30 s), so that every panel has something to show.
        ip = routed_cluster_ip(rn_cluster, rn_namespace, "digits")
        predict(ip, rn_digits.images)
        with SteadyLoad(ip, rn_digits.images[0], clients=1):
            for title, expr in server_panel_queries(rn_namespace, "digits"):
                _bad_request(ip)
                values = wait_for(
                    lambda expr=expr: _finite(prometheus.query(expr)) or None,
                    f"data for the panel {title}: {expr}",  # type: ignore[misc]
                    timeout=60,
                    interval=0.5,
                )
                assert values, title


def _bad_request(host: str) -> None:
    request = urllib.request.Request(
        f"http://{host}/predict",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400


def _finite(result: list[dict[str, Any]]) -> list[float]:
    return [float(s["value"][1]) for s in result if math.isfinite(float(s["value"][1]))]
