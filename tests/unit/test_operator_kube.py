"""The thin API client against a small local HTTP server: content types, errors, re-login, discovery."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
import pytest_asyncio
from aiohttp import web

from mnist_operator import api
from mnist_operator.kube import ApiError, Discovery, KubeClient

pytestmark = pytest.mark.asyncio


class FakeApiServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.token = "good"
        self.served_groups: set[str] = set()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "content_type": request.headers.get("Content-Type"),
                "user_agent": request.headers.get("User-Agent"),
                "auth": request.headers.get("Authorization"),
                "body": body,
            }
        )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(
                {"kind": "Status", "reason": "Unauthorized", "message": "bad token"}, status=401
            )
        if request.path.startswith("/apis/") and request.path.count("/") == 3:  # discovery /apis/<g>/<v>
            group = request.path.split("/")[2]
            if group == "unavailable.example.com":
                return web.json_response({"reason": "ServiceUnavailable", "message": "down"}, status=503)
            if group not in self.served_groups:
                return web.json_response({"reason": "NotFound", "message": "404 page not found"}, status=404)
            plural = {"route.openshift.io": "routes", "monitoring.coreos.com": "servicemonitors"}[group]
            return web.json_response({"resources": [{"name": plural}, {"name": f"{plural}/status"}]})
        if request.path.endswith("/missing"):
            return web.json_response(
                {"kind": "Status", "reason": "NotFound", "message": "not found"}, status=404
            )
        if request.path.endswith("/invalid"):
            return web.json_response(
                {
                    "kind": "Status",
                    "reason": "Invalid",
                    "message": 'Deployment.apps "invalid" is invalid: spec.replicas: bad',
                },
                status=422,
            )
        return web.json_response(json.loads(body) if body else {"kind": "Thing"})


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[FakeApiServer, str]]:
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def client_for(url: str, tokens: list[str], writes: list[tuple[str, str]] | None = None) -> KubeClient:
    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, token=tokens.pop(0) if len(tokens) > 1 else tokens[0])

    return KubeClient(
        login, on_write=(lambda verb, kind: writes.append((verb, kind))) if writes is not None else None
    )


async def test_apply_is_a_server_side_apply_with_our_field_manager(server: Any) -> None:
    fake, url = server
    writes: list[tuple[str, str]] = []
    client = client_for(url, ["good"], writes)
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {},
    }
    assert await client.apply(obj) == obj
    await client.close()
    (req,) = fake.requests
    assert (req["method"], req["path"]) == ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d")
    assert req["query"] == {"fieldManager": "mnist-operator", "force": "true"}
    assert req["content_type"] == "application/apply-patch+yaml"
    assert req["user_agent"] == "mnist-operator"
    assert writes == [("patch", "Deployment")]


async def test_status_is_a_merge_patch_of_the_subresource(server: Any) -> None:
    fake, url = server
    client = client_for(url, ["good"])
    await client.patch_status("ns", "m", {"url": None, "replicas": 1})
    await client.close()
    req = fake.requests[0]
    assert req["path"] == "/apis/aidevsecops.dev/v1alpha1/namespaces/ns/mnistmodels/m/status"
    assert req["content_type"] == "application/merge-patch+json"
    assert json.loads(req["body"]) == {"status": {"url": None, "replicas": 1}}


async def test_errors_carry_status_and_reason_and_404_reads_as_absent(server: Any) -> None:
    _, url = server
    client = client_for(url, ["good"])
    assert await client.get(api.SERVICE, "ns", "missing") is None
    with pytest.raises(ApiError) as caught:
        await client.apply(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "invalid", "namespace": "ns"},
            }
        )
    await client.delete(api.HPA, "ns", "missing", "uid-1")  # already gone: fine
    await client.close()
    assert (caught.value.status, caught.value.reason) == (422, "Invalid")
    assert "spec.replicas: bad" in caught.value.message
    assert not caught.value.retryable


async def test_a_rejected_token_means_one_fresh_login(server: Any) -> None:
    fake, url = server
    client = client_for(url, ["stale", "good"])
    assert await client.request("GET", "/api/v1/namespaces/ns/pods/p") == {"kind": "Thing"}
    await client.close()
    assert [r["auth"] for r in fake.requests] == ["Bearer stale", "Bearer good"]


async def test_connection_errors_are_retryable_api_errors() -> None:
    client = client_for("http://127.0.0.1:9", ["good"])
    with pytest.raises(ApiError) as caught:
        await client.request("GET", "/api")
    await client.close()
    assert caught.value.status == 0 and caught.value.retryable


async def test_discovery_caches_until_the_ttl_or_an_invalidation(server: Any) -> None:
    fake, url = server
    now = [0.0]
    client = client_for(url, ["good"])
    discovery = Discovery(client, ttl=30, clock=lambda: now[0])
    assert await discovery.capabilities() == api.Capabilities(routes=False, service_monitors=False)
    fake.served_groups.add("monitoring.coreos.com")
    assert (await discovery.capabilities()).service_monitors is False  # cached
    discovery.invalidate()
    assert (await discovery.capabilities()).service_monitors is True
    fake.served_groups.add("route.openshift.io")
    now[0] = 31.0
    assert await discovery.capabilities() == api.Capabilities(routes=True, service_monitors=True)
    # An aggregated API that is down is not "absent": that would replace a Route by an Ingress.
    with pytest.raises(ApiError) as caught:
        await client.served_resources("unavailable.example.com", "v1")
    assert caught.value.status == 503 and caught.value.retryable
    await client.close()
