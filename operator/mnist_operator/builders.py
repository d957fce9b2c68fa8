"""Pure builders: the children a MnistModel should have, as plain dicts ready for server-side apply.

No client, no environment, no I/O: the same inputs always give the same objects, which is what
makes "apply only on difference" and table-driven tests possible. Each object carries only the
fields the operator owns; the API server's defaults are left to the API server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mnist_operator import api, storage
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import MnistModelSpec

# Used when spec.resources is absent; the CPU request also gives the HPA something to measure.
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "requests": MappingProxyType({"cpu": "100m", "memory": "256Mi"}),
        "limits": MappingProxyType({"memory": "1Gi"}),
    }
)
TMP_SIZE_LIMIT = "256Mi"
# What the server needs after SIGTERM to finish in-flight requests and exit (its own graceful
# timeout is 25 s); the pod's grace period is the preStop pause plus this.
SERVER_SHUTDOWN_SECONDS = 30
# With one replica a budget either blocks every node drain (minAvailable 1) or protects nothing.
MIN_REPLICAS_FOR_BUDGET = 2
_WHEN_UNSATISFIABLE = {"Required": "DoNotSchedule", "Preferred": "ScheduleAnyway"}


def _container_security() -> dict[str, Any]:
    """Every container of a model pod: what Pod Security `restricted` asks, and a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


@dataclass(frozen=True)
class Owner:
    """The parts of a MnistModel's metadata its children depend on."""

    name: str
    namespace: str
    uid: str
    generation: int = 1
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata") or {}
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=int(meta.get("generation") or 1),
            labels=MappingProxyType(dict(meta.get("labels") or {})),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def selector_labels(owner: Owner) -> dict[str, str]:
    """The immutable Deployment selector (also the Service's and the ServiceMonitor's)."""
    return {api.LABEL_NAME: api.APP_NAME, api.LABEL_INSTANCE: owner.name}


def selector_string(owner: Owner) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(owner).items()))


def standard_labels(owner: Owner, spec: MnistModelSpec) -> dict[str, str]:
    return {
        **selector_labels(owner),
        api.LABEL_COMPONENT: api.COMPONENT,
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
        api.LABEL_VERSION: spec.model_version,
    }


def copied_labels(owner: Owner) -> dict[str, str]:
    """The MnistModel's own labels that its children inherit (never Argo CD's tracking metadata)."""
    return {k: v for k, v in owner.labels.items() if not k.startswith(api.NEVER_COPIED_PREFIXES)}


def desired(
    spec: MnistModelSpec,
    owner: Owner,
    settings: OperatorSettings,
    capabilities: api.Capabilities,
) -> list[dict[str, Any]]:
    """Every child the MnistModel should have right now, in apply order."""
    children = [deployment(spec, owner, settings), service(spec, owner)]
    if spec.exposure.enabled:
        if spec.exposure.gateway is not None:
            if capabilities.http_routes:  # otherwise ExposureReady says the API is missing
                children.append(http_route(spec, owner))
        elif capabilities.routes:
            children.append(route(spec, owner))
        elif spec.exposure.tls != "reencrypt":  # an Ingress cannot re-encrypt; reported in status
            children.append(ingress(spec, owner))
    if spec.service_monitor.enabled and capabilities.service_monitors:
        children.append(service_monitor(spec, owner))
    if spec.autoscaling is not None:
        children.append(horizontal_pod_autoscaler(spec, owner))
    if spec.availability.disruption_budget and spec.min_replicas >= MIN_REPLICAS_FOR_BUDGET:
        children.append(pod_disruption_budget(spec, owner))
    return children


def _metadata(
    owner: Owner,
    spec: MnistModelSpec,
    *,
    extra_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": {**copied_labels(owner), **(extra_labels or {}), **standard_labels(owner, spec)},
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _child(kind: api.ResourceKind, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata, "spec": spec}


def deployment(spec: MnistModelSpec, owner: Owner, settings: OperatorSettings) -> dict[str, Any]:
    deploy_spec: dict[str, Any] = {}
    if spec.fixed_replicas is not None:  # with autoscaling the field is left to the HPA
        deploy_spec["replicas"] = spec.fixed_replicas
    deploy_spec.update(
        {
            "selector": {"matchLabels": selector_labels(owner)},
            "progressDeadlineSeconds": spec.rollout.progress_deadline_seconds,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": spec.rollout.max_surge,
                    "maxUnavailable": spec.rollout.max_unavailable,
                },
            },
            "template": {
                # Only the standard labels: a label edit on the MnistModel must not restart pods.
                "metadata": {"labels": standard_labels(owner, spec)},
                "spec": _pod_spec(spec, owner, settings),
            },
        }
    )
    if spec.source is not None:  # which bytes the pods serve, for status
        deploy_spec["template"]["metadata"]["annotations"] = {storage.SHA256_ANNOTATION: spec.source.sha256}
    return _child(api.DEPLOYMENT, _metadata(owner, spec), deploy_spec)


def canary_deployment(
    spec: MnistModelSpec, owner: Owner, settings: OperatorSettings, replicas: int, *, routed: bool = False
) -> dict[str, Any]:
    """The canary strategy's second Deployment, `<name>-canary`, of `spec` (the version on trial).

    Its pods carry the model's selector labels, so the one Service sends them their share of the
    requests, plus the track label, which its own selector adds: the stable Deployment's selector
    also matches them, but a Deployment only manages the ReplicaSets it owns. `routed` (a Route
    splits the traffic by weight): their instance label is the canary's instead, so that only
    the canary's own Service (`canary_service`) selects them.
    """
    obj = deployment(dataclasses.replace(spec, replicas=replicas, autoscaling=None), owner, settings)
    obj["metadata"]["name"] = owner.name + api.CANARY_SUFFIX
    obj["metadata"]["labels"][api.TRACK_LABEL] = api.CANARY_TRACK
    for labels in (obj["spec"]["selector"]["matchLabels"], obj["spec"]["template"]["metadata"]["labels"]):
        labels[api.TRACK_LABEL] = api.CANARY_TRACK
        if routed:
            labels[api.LABEL_INSTANCE] = owner.name + api.CANARY_SUFFIX
    return obj


def canary_service(spec: MnistModelSpec, owner: Owner) -> dict[str, Any]:
    """`<name>-canary`: the canary's pods alone, for a Route's alternate backend (labelled like the
    model's Service, so that its ServiceMonitor scrapes them too)."""
    obj = service(spec, owner)
    obj["metadata"]["name"] = owner.name + api.CANARY_SUFFIX
    obj["spec"]["selector"] = {
        api.LABEL_NAME: api.APP_NAME,
        api.LABEL_INSTANCE: owner.name + api.CANARY_SUFFIX,
        api.TRACK_LABEL: api.CANARY_TRACK,
    }
    return obj


def with_canary_backend(route_obj: dict[str, Any], owner: Owner, weight: int) -> dict[str, Any]:
    """The model's Route (or HTTPRoute) sending `weight` percent to the canary's Service, the rest
    to the stable."""
    if route_obj["kind"] == api.HTTPROUTE.kind:
        [rule] = route_obj["spec"]["rules"]
        rule["backendRefs"] = [
            _backend_ref(owner.name, 100 - weight),
            _backend_ref(owner.name + api.CANARY_SUFFIX, weight),
        ]
        return route_obj
    route_obj["spec"]["to"]["weight"] = 100 - weight
    route_obj["spec"]["alternateBackends"] = [
        {"kind": "Service", "name": owner.name + api.CANARY_SUFFIX, "weight": weight}
    ]
    return route_obj


def _pod_spec(spec: MnistModelSpec, owner: Owner, settings: OperatorSettings) -> dict[str, Any]:
    pod: dict[str, Any] = {
        # The server never talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": settings.drain_seconds + SERVER_SHUTDOWN_SECONDS,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(spec, settings)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}],
    }
    if spec.source is not None:  # fetched and verified before the server starts (storage.py)
        image = spec.image or settings.default_image
        fetch = storage.fetch_container(spec.source, image, spec.model_version, _container_security())
        if spec.image_pull_policy:
            fetch["imagePullPolicy"] = spec.image_pull_policy
        pod["initContainers"] = [fetch]
        pod["volumes"] += storage.volumes(spec.source)
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [_plain(t) for t in spec.tolerations]
    spread = topology_spread(spec, owner)
    if spread:
        pod["topologySpreadConstraints"] = spread
    return pod


def topology_spread(spec: MnistModelSpec, owner: Owner) -> list[dict[str, Any]]:
    """Replicas spread over nodes, then zones, so that one node or zone going away takes few.

    The same whatever the replica count: a scale-up must not change the pod template (that would
    roll every pod). Only pods of the same ReplicaSet count (pod-template-hash), so a rollout's new
    pods are spread among themselves rather than around the old ones about to go; nodes whose taints
    the pods do not tolerate are no spreading domain (they would hold the skew at 0 forever).
    Nodes without a zone label are simply not scored for the zone spread.
    """
    availability = spec.availability
    constraints = []
    for key, mode in (
        (api.TOPOLOGY_NODE, availability.spread_nodes),
        (api.TOPOLOGY_ZONE, availability.spread_zones),
    ):
        if mode == "None":
            continue
        constraints.append(
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": _WHEN_UNSATISFIABLE[mode],
                "labelSelector": {"matchLabels": selector_labels(owner)},
                "matchLabelKeys": ["pod-template-hash"],
                "nodeTaintsPolicy": "Honor",
            }
        )
    return constraints


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": api.PROBE_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _container(spec: MnistModelSpec, settings: OperatorSettings) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": api.ENV_MODEL_VERSION, "value": spec.model_version},
        {"name": api.ENV_HOST, "value": "0.0.0.0"},
        {"name": api.ENV_PORT, "value": str(api.SERVER_PORT)},
        {"name": api.ENV_PROBE_PORT, "value": str(api.PROBE_PORT)},
    ]
    if spec.source is not None:
        env += storage.server_env()
    for var in spec.env:
        entry: dict[str, Any] = {"name": var.name}
        if var.value_from is not None:
            entry["valueFrom"] = _plain(var.value_from)
        elif var.value:  # the API server drops an empty value; so must we, or we would re-apply forever
            entry["value"] = var.value
        env.append(entry)
    resources = spec.resources if spec.resources is not None else DEFAULT_RESOURCES
    container: dict[str, Any] = {
        "name": api.CONTAINER_NAME,
        "image": spec.image or settings.default_image,
        "ports": [
            {"name": api.PORT_NAME, "containerPort": api.SERVER_PORT, "protocol": "TCP"},
            {"name": api.PROBE_PORT_NAME, "containerPort": api.PROBE_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": {k: dict(v) for k, v in resources.items() if v},
        # Loading TensorFlow and the model takes a while: allow up to 2 minutes before liveness counts.
        "startupProbe": _probe("/healthz", period=5, failures=24),
        "livenessProbe": _probe("/healthz", period=10, failures=3),
        # Ready only once the model is loaded and has answered a warm-up prediction.
        "readinessProbe": _probe("/readyz", period=5, failures=3),
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        # A server that exits at start-up (an unknown modelVersion, a bad setting) says why in its
        # last log lines; they become the container's termination message, which status shows.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.drain_seconds:
        # Deleting a pod and taking it out of Service endpoints happen at once, but kube-proxy
        # and ingress controllers learn of it a moment later: the server keeps serving meanwhile,
        # so a rollout or scale-down fails no request. (The sleep action needs Kubernetes 1.30+.)
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": settings.drain_seconds}}}
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    if spec.source is not None:
        container["volumeMounts"].append(storage.server_mount())
    return container


def service(spec: MnistModelSpec, owner: Owner) -> dict[str, Any]:
    return _child(
        api.SERVICE,
        _metadata(owner, spec),
        {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [
                {
                    "name": api.PORT_NAME,
                    "port": api.SERVICE_PORT,
                    "targetPort": api.PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    )


def route(spec: MnistModelSpec, owner: Owner) -> dict[str, Any]:
    exposure = spec.exposure
    route_spec: dict[str, Any] = {
        "to": {"kind": "Service", "name": owner.name, "weight": 100},
        "port": {"targetPort": api.PORT_NAME},
        "wildcardPolicy": "None",
    }
    if exposure.host:
        route_spec["host"] = exposure.host
    if exposure.tls != "none":
        route_spec["tls"] = {"termination": exposure.tls, "insecureEdgeTerminationPolicy": "Redirect"}
    return _child(api.ROUTE, _metadata(owner, spec, annotations=exposure.annotations), route_spec)


def http_route(spec: MnistModelSpec, owner: Owner) -> dict[str, Any]:
    """A Gateway API HTTPRoute attaching the model's Service to the Gateway it names."""
    exposure = spec.exposure
    gateway = exposure.gateway
    assert gateway is not None
    parent: dict[str, Any] = {
        "group": api.HTTPROUTE.group,
        "kind": "Gateway",
        "name": gateway.name,
    }
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    route_spec: dict[str, Any] = {"parentRefs": [parent]}
    if exposure.host:
        route_spec["hostnames"] = [exposure.host]
    route_spec["rules"] = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [_backend_ref(owner.name, None)],
        }
    ]
    return _child(api.HTTPROUTE, _metadata(owner, spec, annotations=exposure.annotations), route_spec)


def _backend_ref(service: str, weight: int | None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": service, "port": api.SERVICE_PORT}
    if weight is not None:
        ref["weight"] = weight
    return ref


def ingress(spec: MnistModelSpec, owner: Owner) -> dict[str, Any]:
    exposure = spec.exposure
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": owner.name, "port": {"name": api.PORT_NAME}}},
                }
            ]
        }
    }
    if exposure.host:
        rule = {"host": exposure.host, **rule}
    ingress_spec: dict[str, Any] = {}
    if exposure.ingress_class_name:
        ingress_spec["ingressClassName"] = exposure.ingress_class_name
    ingress_spec["rules"] = [rule]
    if exposure.tls != "none" and exposure.host:
        ingress_spec["tls"] = [{"hosts": [exposure.host], "secretName": tls_secret_name(spec, owner)}]
    return _child(api.INGRESS, _metadata(owner, spec, annotations=exposure.annotations), ingress_spec)


def tls_secret_name(spec: MnistModelSpec, owner: Owner) -> str:
    return spec.exposure.tls_secret_name or f"{owner.name}-tls"


def service_monitor(spec: MnistModelSpec, owner: Owner) -> dict[str, Any]:
    monitor = spec.service_monitor
    return _child(
        api.SERVICE_MONITOR,
        _metadata(owner, spec, extra_labels=monitor.labels),
        {
            "selector": {"matchLabels": selector_labels(owner)},
            "endpoints": [
                {"port": api.PORT_NAME, "path": "/metrics", "scheme": "http", "interval": monitor.interval}
            ],
        },
    )


def horizontal_pod_autoscaler(spec: MnistModelSpec, owner: Owner) -> dict[str, Any]:
    scaling = spec.autoscaling
    assert scaling is not None
    return _child(
        api.HPA,
        _metadata(owner, spec),
        {
            "scaleTargetRef": {
                "apiVersion": api.DEPLOYMENT.api_version,
                "kind": "Deployment",
                "name": owner.name,
            },
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": scaling.target_cpu_utilization_percentage,
                        },
                    },
                }
            ],
        },
    )


def pod_disruption_budget(spec: MnistModelSpec, owner: Owner) -> dict[str, Any]:
    """A node drain evicts at most maxUnavailable of the model's pods at a time, waiting for their
    replacements to be ready; pods that are not ready anyway (crash-looping) may always go, so a
    broken pod never blocks a drain."""
    return _child(
        api.PDB,
        _metadata(owner, spec),
        {
            "maxUnavailable": spec.availability.max_unavailable,
            "selector": {"matchLabels": selector_labels(owner)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    )


def _plain(value: Any) -> Any:
    """Deep copy of user-given read-only mappings into plain dicts and lists, without the empty
    strings and nulls the API server would drop (keeping them would look like drift forever)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if v is not None and v != ""}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
