"""Names shared by the CRD, the builders, the client and the handlers: one place to change them."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "aidevsecops.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MnistModel"
PLURAL = "mnistmodels"

FIELD_MANAGER = "mnist-operator"
# A second field manager that briefly co-owns Deployment.spec.replicas while the HPA takes it over,
# so that dropping the field from our apply does not reset the replica count to 1.
HANDOVER_FIELD_MANAGER = "mnist-operator-handover"
USER_AGENT = "mnist-operator"

# Node labels the server pods are spread over (zones only where the nodes carry the label).
TOPOLOGY_NODE = "kubernetes.io/hostname"
TOPOLOGY_ZONE = "topology.kubernetes.io/zone"

# Labels on every child (and on the pods).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VERSION = "app.kubernetes.io/version"
APP_NAME = "mnist-server"
COMPONENT = "model-server"
MANAGED_BY = "mnist-operator"
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"

# Hash of the last applied desired object: tells "our spec changed" (including removed fields,
# which a subset comparison cannot see) apart from "nothing to do", without a dry-run write.
# A label, not an annotation: a Deployment's generation moves with its annotations, and a new
# generation would read as a rollout (Ready=False) on a mere label edit of the MnistModel.
HASH_LABEL = f"{GROUP}/applied-hash"

# Labels and annotations of the MnistModel that never reach its children: Argo CD's tracking
# metadata (children carry their own ownerReferences) and the well-known app labels we set ourselves.
NEVER_COPIED_PREFIXES = ("argocd.argoproj.io/", "app.kubernetes.io/", "kopf.zalando.org/")

# The canary strategy's second Deployment, <name>-canary, and the label on it and its pods.
CANARY_SUFFIX = "-canary"
TRACK_LABEL = f"{GROUP}/track"
CANARY_TRACK = "canary"

SERVER_PORT = 8080
SERVICE_PORT = 80
PORT_NAME = "http"
# The server's probe listener (MNIST_SERVER_PROBE_PORT): the kubelet's probes go there, so that
# they are answered on a thread of their own, not in line behind requests.
PROBE_PORT = 8081
PROBE_PORT_NAME = "probes"
CONTAINER_NAME = "server"

# Environment variables the operator sets on the server container; spec.env may not override them.
ENV_MODEL_VERSION = "MNIST_SERVER_MODEL_VERSION"
ENV_HOST = "MNIST_SERVER_HOST"
ENV_PORT = "MNIST_SERVER_PORT"
ENV_PROBE_PORT = "MNIST_SERVER_PROBE_PORT"
RESERVED_ENV = (ENV_MODEL_VERSION, ENV_HOST, ENV_PORT, ENV_PROBE_PORT)


@dataclass(frozen=True)
class ResourceKind:
    """A Kubernetes API resource the operator reads or writes."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


MNISTMODEL = ResourceKind(GROUP, VERSION, KIND, PLURAL)
DEPLOYMENT = ResourceKind("apps", "v1", "Deployment", "deployments")
SERVICE = ResourceKind("", "v1", "Service", "services")
INGRESS = ResourceKind("networking.k8s.io", "v1", "Ingress", "ingresses")
ROUTE = ResourceKind("route.openshift.io", "v1", "Route", "routes")
# Gateway API: a model naming a Gateway (spec.exposure.gateway) attaches an HTTPRoute to it.
HTTPROUTE = ResourceKind("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
SERVICE_MONITOR = ResourceKind("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors")
HPA = ResourceKind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
PDB = ResourceKind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")
POD = ResourceKind("", "v1", "Pod", "pods")
EVENT = ResourceKind("", "v1", "Event", "events")
CRD = ResourceKind(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False
)
LEASE = ResourceKind("coordination.k8s.io", "v1", "Lease", "leases")
# The Lease the replicas of one install elect their leader with (leader.py), in their own namespace.
LEASE_NAME = "mnist-operator"

# Every kind of child, in apply order (the Service before what points at it).
CHILD_KINDS = (DEPLOYMENT, SERVICE, INGRESS, ROUTE, HTTPROUTE, SERVICE_MONITOR, HPA, PDB)
# Kinds whose API may be absent from a cluster; discovered at run time.
OPTIONAL_KINDS = (ROUTE, HTTPROUTE, SERVICE_MONITOR)
# The kinds whose backends carry weights: a canary behind one of them is split by weight.
WEIGHTED_KINDS = (ROUTE, HTTPROUTE)
KINDS_BY_KIND = {k.kind: k for k in (*CHILD_KINDS, MNISTMODEL, POD, EVENT)}


@dataclass(frozen=True)
class Capabilities:
    """Which optional APIs the cluster serves (from discovery)."""

    routes: bool = False
    service_monitors: bool = False
    http_routes: bool = False

    @property
    def exposure_kind(self) -> ResourceKind:
        return ROUTE if self.routes else INGRESS

    def exposure_kind_for(self, gateway: bool) -> ResourceKind:
        """What exposes a model: an HTTPRoute when it names a Gateway, else a Route or an Ingress."""
        return HTTPROUTE if gateway else self.exposure_kind

    def serves(self, kind: ResourceKind) -> bool:
        if kind == ROUTE:
            return self.routes
        if kind == HTTPROUTE:
            return self.http_routes
        if kind == SERVICE_MONITOR:
            return self.service_monitors
        return True
