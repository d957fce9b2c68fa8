"""What every fault test checks afterwards, and the faults that need more than a signal.

After a fault: every model converges to the truth (Ready for its current generation, its
children as its spec says), nothing is lost (every model and every child there, the changes made
during the fault carried out), no child is duplicated (one of each kind per model, one
ReplicaSet per Deployment, as many pods as replicas), the operator's writes stay bounded (the
audit log, by kind and answer), and the operator never needed a restart (the same process, alive
and healthy).
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from operator_support import Kube, OperatorProcess, free_port, mnist_model

from localcluster import OPERATOR_USER, LocalCluster

INSTANCE = "app.kubernetes.io/instance"


def create_models(kube: Kube, count: int, prefix: str = "m") -> list[str]:
    names = [f"{prefix}{i:02d}" for i in range(count)]
    kube.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(mnist_model(n)) for n in names))
    return names


def items(kube: Kube, kind: str) -> list[dict[str, Any]]:
    return list(json.loads(kube.kubectl("get", kind, "-o", "json").stdout)["items"])


def assert_converged(
    kube: Kube, names: list[str], replicas: dict[str, int] | None = None, timeout: float = 120
) -> None:
    """Every model Ready for its current generation, with exactly its children: one Deployment (at
    the wanted replicas, one ReplicaSet, as many pods) and one Service each, nothing else of ours.

    `timeout` is for all of them, not for the first only (any model can be the last to recover),
    and each still gets 30 s once it has passed. Once the API server is back, the
    controller-manager's informers wait out client-go's reflector backoff (up to 30 s, jittered up
    to twice that) before they watch again; until then a Deployment's status stays behind its
    ReplicaSet's, and the operator, reporting the Deployment, rightly says "0 available" (seen: a
    model Ready 40 s after another).
    """
    replicas = replicas or {}
    deadline = time.monotonic() + timeout
    for name in names:
        kube.wait_ready(name, timeout=max(deadline - time.monotonic(), 30.0))
    models = {m["metadata"]["name"] for m in items(kube, "mnistmodels")}
    assert models == set(names), "a model was lost (or one appeared)"

    def wait_settled() -> dict[str, Counter[str]] | None:
        counts: dict[str, Counter[str]] = {}
        for kind in ("deployments", "services", "replicasets", "pods"):
            counts[kind] = Counter(
                o["metadata"]["labels"].get(INSTANCE, "?")
                for o in items(kube, kind)
                if not o["metadata"].get("deletionTimestamp")
            )
        want = {name: replicas.get(name, 1) for name in names}
        ok = (
            counts["deployments"] == Counter(names)
            and counts["services"] == Counter(names)
            and counts["replicasets"] == Counter(names)
            and counts["pods"] == Counter(want)
        )
        return counts if ok else None

    kube.wait_for(wait_settled, "one of each child per model, as many pods as replicas", 60, 0.5)
    for deployment in items(kube, "deployments"):
        name = deployment["metadata"]["name"]
        assert deployment["spec"]["replicas"] == replicas.get(name, 1), name


def writes(kube: Kube, since: datetime, user: str = OPERATOR_USER) -> list[dict[str, Any]]:
    return kube.operator_writes(since, user)


def tally(events: list[dict[str, Any]]) -> Counter[str]:
    """ "<verb> <resource>[/<subresource>] <code>" -> how many (e.g. "patch deployments 200")."""
    out: Counter[str] = Counter()
    for e in events:
        ref = e.get("objectRef", {})
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out[f"{e['verb']} {resource} {e.get('responseStatus', {}).get('code')}"] += 1
    return out


def successful(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if 200 <= e.get("responseStatus", {}).get("code", 0) < 300]


def assert_never_restarted(operator: OperatorProcess, pid: int) -> None:
    assert operator.proc is not None and operator.proc.pid == pid and operator.alive()
    assert operator.healthy()
    assert operator.metric("mnist_operator_workqueue_worker_restarts_total") == 0


# What the operator reads and writes, but its Lease: this fault is about the reconciles.
THROTTLED_RESOURCES = [
    "mnistmodels",
    "mnistmodels/status",
    "deployments",
    "services",
    "pods",
    "events",
    "ingresses",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
]


def flow_control(
    cluster: LocalCluster, name: str, namespace: str, user: str, *, shares: int = 1
) -> Callable[[], None]:
    """API Priority and Fairness, tight: `user`'s requests in `namespace` go to a priority level
    with `shares` nominal concurrency shares (of ~245 in all: about 3 seats), no borrowing, and
    no queue (Reject: a request over the limit gets 429 at once). Returns the undo.

    Not for a system:masters user: the `exempt` FlowSchema takes those first."""
    level = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": name},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": shares,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    }
    schema = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": name},
            "matchingPrecedence": 500,  # before every default but the exempt and system ones
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [{"kind": "User", "user": {"name": user}}],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": THROTTLED_RESOURCES,
                            "namespaces": [namespace],
                        }
                    ],
                }
            ],
        },
    }
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [level, schema]})
    )

    def undo() -> None:
        cluster.kubectl("delete", "flowschema", name, "--ignore-not-found")
        cluster.kubectl("delete", "prioritylevelconfiguration", name, "--ignore-not-found")

    return undo


class FailingWebhook:
    """A validating admission webhook that answers HTTP 500 while `failing`: the API server then
    fails the operator's writes with 500 Internal Error ("failed calling webhook"), as a broken
    policy engine or an overloaded aggregated API would. Served over TLS with the cluster's own
    serving certificate (its SANs include 127.0.0.1)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.failing = True
        self.calls = 0
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                webhook.calls += 1
                if webhook.failing:
                    self.send_response(500)
                    self.end_headers()
                    return
                body = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": review["request"]["uid"], "allowed": True},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cluster.pki_dir / "serving.crt", cluster.pki_dir / "serving.key")
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)

    @contextlib.contextmanager
    def installed(self, name: str, namespace: str) -> Iterator[FailingWebhook]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        ca = self.cluster.ca_file.read_bytes()
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "storm.faults.mnist.test",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{self.port}/validate",
                        "caBundle": base64.b64encode(ca).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": ["apps", "", "aidevsecops.dev"],
                            "apiVersions": ["*"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["deployments", "services", "mnistmodels/status"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                    "matchConditions": [
                        {
                            "name": "the-operator",
                            "expression": "request.userInfo.username == 'mnist-operator'",
                        }
                    ],
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 2,
                }
            ],
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(config))
        try:
            yield self
        finally:
            self.cluster.kubectl("delete", "validatingwebhookconfiguration", name, "--ignore-not-found")
            self.server.shutdown()
            self.server.server_close()
