"""The thin API client against kmock's HTTP server: content types, errors, re-login, discovery."""

from __future__ import annotations

import json
import re

import kopf
import pytest
from kmock import RawHandler, Request

from mnist_operator import api
from mnist_operator.kube import ApiError, Discovery, KubeClient

# The async tests are marked one by one: a module-wide asyncio mark warns on the plain test below.
pytestmark = [pytest.mark.kmock(cls=RawHandler)]


def status(reason: str, message: str) -> dict[str, str]:
    return {"kind": "Status", "reason": reason, "message": message}


@pytest.fixture
def server(kmock: RawHandler) -> RawHandler:
    """A kube-apiserver as the client meets it (kmock's RawHandler, from kopf's author): any token
    but "good" is refused, objects named `missing` are absent and `invalid` ones rejected, the
    aggregated API unavailable.example.com is down, no other API group is served (until a test
    serves one), and a write answers what it was sent. The first matching reaction answers."""
    kmock[refused_token] << 401 << status("Unauthorized", "bad token")
    kmock[re.compile(r".*/missing$")] << 404 << status("NotFound", "not found")
    (
        kmock[re.compile(r".*/invalid$")]
        << 422
        << status("Invalid", 'Deployment.apps "invalid" is invalid: spec.replicas: bad')
    )
    kmock["get /apis/unavailable.example.com/v1"] << 503 << status("ServiceUnavailable", "down")
    for write in ("patch", "post", "delete"):
        kmock[write] << echo
    kmock[re.compile(r"/api/.*")] << echo
    kmock.fallback << 404 << status("NotFound", "404 page not found")
    return kmock


def refused_token(request: Request) -> bool:
    return request.headers.get("Authorization") != "Bearer good"


def echo(request: Request) -> object:
    return request.data if request.body else {"kind": "Thing"}


def serve_group(server: RawHandler, group: str, plural: str) -> None:
    server[f"get /apis/{group}/v1"] << {"resources": [{"name": plural}, {"name": f"{plural}/status"}]}


def client_for(url: str, tokens: list[str], writes: list[tuple[str, str]] | None = None) -> KubeClient:
    async def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, token=tokens.pop(0) if len(tokens) > 1 else tokens[0])

    return KubeClient(
        login, on_write=(lambda verb, kind: writes.append((verb, kind))) if writes is not None else None
    )


@pytest.mark.asyncio
async def test_apply_is_a_server_side_apply_with_our_field_manager(server: RawHandler) -> None:
    writes: list[tuple[str, str]] = []
    client = client_for(str(server.url), ["good"], writes)
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "ns"},
        "spec": {},
    }
    assert await client.apply(obj) == obj
    await client.close()
    (req,) = list(server)
    assert (req.method, req.url.path) == ("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d")
    assert req.params == {"fieldManager": "mnist-operator", "force": "true"}
    assert req.headers["Content-Type"] == "application/apply-patch+yaml"
    assert req.headers["User-Agent"] == "mnist-operator"
    assert writes == [("patch", "Deployment")]


@pytest.mark.asyncio
async def test_status_is_a_merge_patch_of_the_subresource(server: RawHandler) -> None:
    client = client_for(str(server.url), ["good"])
    await client.patch_status("ns", "m", {"url": None, "replicas": 1})
    await client.close()
    req = server[0]
    assert req.url.path == "/apis/aidevsecops.dev/v1alpha1/namespaces/ns/mnistmodels/m/status"
    assert req.headers["Content-Type"] == "application/merge-patch+json"
    assert json.loads(req.body) == {"status": {"url": None, "replicas": 1}}


@pytest.mark.asyncio
async def test_errors_carry_status_and_reason_and_404_reads_as_absent(server: RawHandler) -> None:
    client = client_for(str(server.url), ["good"])
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


@pytest.mark.asyncio
async def test_a_rejected_token_means_one_fresh_login(server: RawHandler) -> None:
    client = client_for(str(server.url), ["stale", "good"])
    assert await client.request("GET", "/api/v1/namespaces/ns/pods/p") == {"kind": "Thing"}
    await client.close()
    assert [r.headers["Authorization"] for r in server] == ["Bearer stale", "Bearer good"]


@pytest.mark.asyncio
async def test_connection_errors_are_retryable_api_errors() -> None:
    client = client_for("http://127.0.0.1:9", ["good"])
    with pytest.raises(ApiError) as caught:
        await client.request("GET", "/api")
    await client.close()
    assert caught.value.status == 0 and caught.value.retryable


@pytest.mark.asyncio
async def test_discovery_caches_until_the_ttl_or_an_invalidation(server: RawHandler) -> None:
    now = [0.0]
    client = client_for(str(server.url), ["good"])
    discovery = Discovery(client, ttl=30, clock=lambda: now[0])
    assert await discovery.capabilities() == api.Capabilities(routes=False, service_monitors=False)
    serve_group(server, "monitoring.coreos.com", "servicemonitors")
    assert (await discovery.capabilities()).service_monitors is False  # cached
    discovery.invalidate()
    assert (await discovery.capabilities()).service_monitors is True
    serve_group(server, "route.openshift.io", "routes")
    now[0] = 31.0
    assert await discovery.capabilities() == api.Capabilities(routes=True, service_monitors=True)
    # An aggregated API that is down is not "absent": that would replace a Route by an Ingress.
    with pytest.raises(ApiError) as caught:
        await client.served_resources("unavailable.example.com", "v1")
    assert caught.value.status == 503 and caught.value.retryable
    await client.close()


@pytest.mark.parametrize(
    ("env", "server"),
    [
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.0.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, "https://[fd00::1]:6443"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None),
        ({}, None),
    ],
)
def test_in_cluster_the_api_server_is_found_by_address_not_by_dns(
    env: dict[str, str], server: str | None
) -> None:
    """As client-go does: reaching the API server must not depend on cluster DNS."""
    from mnist_operator.kube import in_cluster_server

    assert in_cluster_server(env) == server
