"""The one list of the condition types and reasons a MnistModel's status can show.

`status.py` and `controller.py` spell reasons only through `Reason`; the Warning Events, the
error metric's labels and the pod severity order are derived here. The Argo CD health check
(manifests/argocd/mnistmodel-health.lua) and the table in docs/operator.md cannot import this
module: tests hold them to it.

To add a reason: a member of `Reason`, then the sets below it belongs to, then the docs table.
"""

from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    READY = "Ready"  # the summary
    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    EXPOSURE_READY = "ExposureReady"
    MONITORING_READY = "MonitoringReady"


class Reason(StrEnum):
    # Ready
    SERVING = "Serving"
    ROLLOUT_PENDING = "RolloutPending"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    PODS_NOT_READY = "PodsNotReady"
    EXPOSURE_NOT_READY = "ExposureNotReady"
    SCALED_TO_ZERO = "ScaledToZero"
    DEPLOYMENT_PENDING = "DeploymentPending"  # also Available and Progressing
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"  # also Progressing
    # Ready: what the reconcile could not do (also the error metric's labels)
    INVALID_SPEC = "InvalidSpec"
    CHILD_CONFLICT = "ChildConflict"
    CHILD_INVALID = "ChildInvalid"
    FORBIDDEN = "Forbidden"
    API_UNAVAILABLE = "ApiUnavailable"
    APPLY_FAILED = "ApplyFailed"
    # Ready (the workload), ExposureReady, MonitoringReady: the operator's policy refused that part
    POLICY_VIOLATION = "PolicyViolation"
    # Available
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    MINIMUM_REPLICAS_UNAVAILABLE = "MinimumReplicasUnavailable"
    # Progressing
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    # ExposureReady and MonitoringReady
    DISABLED = "Disabled"
    ADMITTED = "Admitted"
    AWAITING_ADMISSION = "AwaitingAdmission"
    ROUTE_NOT_ADMITTED = "RouteNotAdmitted"
    ROUTE_PENDING = "RoutePending"
    INGRESS_READY = "IngressReady"
    AWAITING_ADDRESS = "AwaitingAddress"
    INGRESS_PENDING = "IngressPending"
    REENCRYPT_UNSUPPORTED = "ReencryptUnsupported"
    HTTPROUTE_ACCEPTED = "HTTPRouteAccepted"
    HTTPROUTE_NOT_ACCEPTED = "HTTPRouteNotAccepted"
    AWAITING_ACCEPTANCE = "AwaitingAcceptance"
    HTTPROUTE_PENDING = "HTTPRoutePending"
    GATEWAY_API_MISSING = "GatewayAPIMissing"
    SERVICE_MONITOR_READY = "ServiceMonitorReady"
    SERVICE_MONITOR_PENDING = "ServiceMonitorPending"
    SERVICE_MONITOR_API_MISSING = "ServiceMonitorAPIMissing"
    # A pod's reason, in Ready and Available: ours for pods that are merely not ready yet...
    NOT_READY = "NotReady"
    PENDING = "Pending"
    TERMINATED = "Terminated"
    # ... and the kubelet's and scheduler's, passed through (others they may add pass through too).
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    INVALID_IMAGE_NAME = "InvalidImageName"
    ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    ERR_IMAGE_PULL = "ErrImagePull"
    OOM_KILLED = "OOMKilled"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    CREATE_CONTAINER_ERROR = "CreateContainerError"
    RUN_CONTAINER_ERROR = "RunContainerError"
    ERROR = "Error"
    UNSCHEDULABLE = "Unschedulable"
    # A pod's reason from its model fetch (the init container `mnist-server fetch` of a model with
    # spec.source), as it writes them to its termination message: `<Reason>: <message>`.
    DIGEST_MISMATCH = "DigestMismatch"
    MODEL_ACCESS_DENIED = "ModelAccessDenied"
    INVALID_MODEL_ARCHIVE = "InvalidModelArchive"
    MODEL_FETCH_FAILED = "ModelFetchFailed"
    # Ready (and Progressing while it runs): the canary strategy (canary.py), and status.canary.reason
    CANARY_PROGRESSING = "CanaryProgressing"
    CANARY_PAUSED = "CanaryPaused"
    CANARY_ROLLED_BACK = "CanaryRolledBack"
    CANARY_ABORTED = "CanaryAborted"
    CANARY_PROMOTED = "CanaryPromoted"


class EventReason(StrEnum):
    """Reasons of the Events the operator posts besides a condition's own reason."""

    READY = "Ready"
    DEGRADED = "Degraded"
    ROLLOUT_STARTED = "RolloutStarted"
    CANARY_STARTED = "CanaryStarted"
    CANARY_STEP_PASSED = "CanaryStepPassed"


# What the model fetcher reports (mnist_server.fetch.FetchReason; a test holds them equal).
FETCH_REASONS: tuple[Reason, ...] = (
    Reason.DIGEST_MISMATCH,
    Reason.MODEL_ACCESS_DENIED,
    Reason.INVALID_MODEL_ARCHIVE,
    Reason.MODEL_FETCH_FAILED,
)

# Pod reasons that mean "this will not fix itself soon", most severe first: they hold Ready back
# even mid-rollout, and the most severe one names the condition. A model that cannot be fetched
# is stuck like a crash loop (the kubelet retries the fetch with back-off), and says why.
STUCK_POD_REASONS: tuple[Reason, ...] = (
    Reason.CREATE_CONTAINER_CONFIG_ERROR,
    *FETCH_REASONS,
    Reason.INVALID_IMAGE_NAME,
    Reason.ERR_IMAGE_NEVER_PULL,
    Reason.IMAGE_PULL_BACK_OFF,
    Reason.ERR_IMAGE_PULL,
    Reason.OOM_KILLED,
    Reason.CRASH_LOOP_BACK_OFF,
    Reason.CREATE_CONTAINER_ERROR,
    Reason.RUN_CONTAINER_ERROR,
)

# What the reconcile could not do; each is a label value of
# mnist_operator_reconcile_errors_total (so the set is closed).
FAILURE_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.CHILD_CONFLICT,
        Reason.CHILD_INVALID,
        Reason.FORBIDDEN,
        Reason.API_UNAVAILABLE,
        Reason.APPLY_FAILED,
    }
)

# Ready=False reasons that come with ordinary rollouts and scale-ups (new pods still loading the
# model) or were asked for: the condition tells them, a Warning Event would cry wolf. Pods stuck
# for real (CrashLoopBackOff, ...) and stuck rollouts do get one.
QUIET_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.ROLLOUT_IN_PROGRESS,
        Reason.ROLLOUT_PENDING,
        Reason.DEPLOYMENT_PENDING,
        Reason.SCALED_TO_ZERO,
        Reason.NOT_READY,
        Reason.PENDING,
        Reason.PODS_NOT_READY,
        Reason.CANARY_PROGRESSING,  # its steps have Events of their own
    }
)

# Ready=False reasons that are part of getting there, not a failure: the operator or the
# Deployment controller has not caught up, pods are starting, loading the model or waiting for a
# node, or the API server did not answer for a moment. Argo CD shows them as Progressing
# (the health check's `progressing_reasons`); any other Ready=False reason is Degraded, except
# ScaledToZero (Suspended).
TRANSIENT_REASONS: frozenset[Reason] = frozenset(
    {
        Reason.DEPLOYMENT_PENDING,
        Reason.ROLLOUT_PENDING,
        Reason.ROLLOUT_IN_PROGRESS,
        Reason.PODS_NOT_READY,
        Reason.NOT_READY,
        Reason.PENDING,
        Reason.UNSCHEDULABLE,
        Reason.API_UNAVAILABLE,
        Reason.CANARY_PROGRESSING,
        Reason.CANARY_PAUSED,  # no verdict yet (too few requests, Prometheus unreachable)
    }
)
