"""Thin asynchronous Kubernetes I/O: get, server-side apply, delete, status patch, events, discovery.

Raw aiohttp on the event loop kopf already runs (no thread pool, any resource kind by path).
Credentials come from kopf's own login helpers, so in-cluster service accounts, kubeconfig files
and the official client's exec plugins all work; a 401 triggers one fresh login and a retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from mnist_operator import api

logger = logging.getLogger(__name__)

WriteObserver = Callable[[str, str], None]  # (verb, kind) of every write the operator makes
# Asked before every write: raises when this process may not write (it does not lead), else
# returns how many seconds the write may take on the API server (leader.Elector.write_budget).
WriteGate = Callable[[], float]
Login = Callable[[], Awaitable[kopf.ConnectionInfo]]

_APPLY = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON
_MERGE = "application/merge-patch+json"


class ApiError(Exception):
    """The API server refused a request; carries its HTTP status and Status reason."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth trying again as is (the server or the network may recover; input errors will not)."""
        return self.status in (0, 408, 429) or self.status >= 500


async def default_login() -> kopf.ConnectionInfo:
    """In-cluster service account, else the kubeconfig in $KUBECONFIG (read now, not at import),
    else whatever the official client can make of it (exec plugins, auth providers)."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        info = dataclasses.replace(info, server=in_cluster_server(os.environ) or info.server)
    if info is None:
        info = kopf.login_with_kubeconfig(settings=settings)
        has_credentials = info is not None and (
            info.token or info.certificate_path or info.certificate_data or info.username
        )
        if not has_credentials:
            info = kopf.login_via_client(logger=logger, settings=settings)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: neither a service account nor a kubeconfig")
    return info


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The API server as client-go's in-cluster config finds it: the `kubernetes` Service's
    address from the environment the kubelet gives every pod.

    kopf's own in-cluster login names https://kubernetes.default.svc, which needs cluster DNS
    to be up: with the address, reaching the API does not depend on DNS (as for every
    controller built on client-go).
    """
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class KubeClient:
    def __init__(
        self,
        login: Login = default_login,
        *,
        user_agent: str = api.USER_AGENT,
        timeout: float = 30.0,
        on_write: WriteObserver | None = None,
        write_gate: WriteGate | None = None,
    ) -> None:
        self._login = login
        self.write_gate = write_gate
        self._user_agent = user_agent
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._on_write = on_write
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._lock = asyncio.Lock()

    async def _connect(self, *, fresh: bool = False) -> aiohttp.ClientSession:
        async with self._lock:
            if self._session is not None and not fresh:
                return self._session
            if self._session is not None:
                await self._session.close()
            info = await self._login()
            self._server = info.server.rstrip("/")
            connector = aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=32)
            headers = {"User-Agent": self._user_agent, **info.as_http_headers()}
            self._session = aiohttp.ClientSession(connector=connector, headers=headers, timeout=self._timeout)
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        kind: str = "",
    ) -> Any:
        """One API call; returns the decoded JSON body, raises ApiError on any non-2xx status."""
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type, "Accept": accept}
        if method != "GET" and self.write_gate is not None:
            # The API server gives up on the write once the budget is spent (even one it queued).
            params = {**(params or {}), "timeout": f"{self.write_gate():.3f}s"}
        for attempt in (1, 2):
            session = await self._connect(fresh=attempt == 2)
            try:
                async with session.request(
                    method,
                    self._server + path,
                    params=params,
                    data=data,
                    headers=headers,
                ) as response:
                    text = await response.text()
                    if response.status == 401 and attempt == 1:
                        continue  # credentials may have rotated: log in again, once
                    if method != "GET" and self._on_write is not None:
                        self._on_write(method.lower(), kind)
                    if response.status >= 400:
                        raise _api_error(response.status, text, method, path)
                    return json.loads(text) if text else None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ApiError(0, "ConnectionError", str(exc) or type(exc).__name__, method, path) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, kind: api.ResourceKind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", kind.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def apply(self, obj: Mapping[str, Any], *, manager: str = api.FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply (create or update) with our single field manager, taking ownership."""
        kind = api.KINDS_BY_KIND[obj["kind"]]
        meta = obj["metadata"]
        result: dict[str, Any] = await self.request(
            "PATCH",
            kind.path(meta["namespace"], meta["name"]),
            body=obj,
            content_type=_APPLY,
            params={"fieldManager": manager, "force": "true"},
            kind=kind.kind,
        )
        return result

    async def delete(self, kind: api.ResourceKind, namespace: str, name: str, uid: str | None) -> None:
        """Delete one object, only if it still is the one we looked at (uid precondition)."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", kind.path(namespace, name), body=body, kind=kind.kind)
        except ApiError as exc:
            if exc.status not in (404, 409):  # gone already, or replaced by another object
                raise

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """JSON merge patch of the status subresource (null values remove fields)."""
        try:
            result: dict[str, Any] = await self.request(
                "PATCH",
                api.MNISTMODEL.path(namespace, name, "status"),
                body={"status": status},
                content_type=_MERGE,
                kind=api.KIND,
            )
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile
                return None
            raise
        return result

    async def post_event(self, owner: Mapping[str, Any], *, type: str, reason: str, message: str) -> None:
        meta = owner["metadata"]
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": type,
            "source": {"component": api.FIELD_MANAGER},
            "reportingComponent": api.FIELD_MANAGER,
            "reportingInstance": api.FIELD_MANAGER,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self.request("POST", api.EVENT.path(meta["namespace"]), body=event, kind=api.EVENT.kind)

    async def allowed(self, verb: str, kind: api.ResourceKind) -> bool:
        """Whether our own identity may `verb` this kind (cluster-wide): a SelfSubjectAccessReview,
        which every authenticated identity may ask, so it needs no rule of ours."""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "group": kind.group, "resource": kind.plural}},
        }
        answer = await self.request(
            "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review
        )
        return bool((answer.get("status") or {}).get("allowed"))

    async def served_resources(self, group: str, version: str) -> set[str] | None:
        """Resource names served under group/version, or None when the API is not served."""
        try:
            found = await self.request("GET", f"/apis/{group}/{version}")
        except ApiError as exc:
            # Only 404 means "not installed". A 503 is an aggregated API that is down for now (say
            # OpenShift's route API during an upgrade): deciding "no Routes here" would swap the
            # Route for an Ingress, so let the reconcile fail and retry instead.
            if exc.status == 404:
                return None
            raise
        return {r.get("name") for r in found.get("resources") or []}


def _api_error(status: int, text: str, method: str, path: str) -> ApiError:
    try:
        body = json.loads(text)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return ApiError(
        status, str(body.get("reason") or "Error"), str(body.get("message") or text[:300]), method, path
    )


class Discovery:
    """Which optional APIs are served, re-checked after a TTL so a CRD installed later is noticed."""

    def __init__(self, client: KubeClient, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._cached: api.Capabilities | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._cached = None

    async def capabilities(self) -> api.Capabilities:
        async with self._lock:
            if self._cached is None or self._clock() >= self._expires:
                served = {}
                for kind in api.OPTIONAL_KINDS:
                    resources = await self._client.served_resources(kind.group, kind.version)
                    served[kind.kind] = resources is not None and kind.plural in resources
                self._cached = api.Capabilities(
                    routes=served[api.ROUTE.kind],
                    service_monitors=served[api.SERVICE_MONITOR.kind],
                    http_routes=served[api.HTTPROUTE.kind],
                )
                self._expires = self._clock() + self._ttl
            return self._cached
