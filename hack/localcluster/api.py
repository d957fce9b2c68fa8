"""Talking to a local cluster: raw API calls with the admin token, its kubectl, the audit log."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl run; unlike its base class, its message says what kubectl said."""

    def __str__(self) -> str:
        said = (self.stderr or self.stdout or "").strip()
        return f"{super().__str__()}\n{said[-2000:]}"


@dataclass(frozen=True)
class ApiClient:
    api_url: str
    ca_file: Path
    token: str
    kubectl_bin: Path
    kubeconfig: Path
    audit_log: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        """One API call with the admin token: (HTTP status, decoded JSON body or text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def exists(self, path: str) -> bool:
        try:
            return self.request("GET", path)[0] == 200
        except OSError:
            return False

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run this cluster's own kubectl (same build as the server) with the admin kubeconfig."""
        done = subprocess.run(
            [str(self.kubectl_bin), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise KubectlError(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def audit_events(self, predicate: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Audit events recorded so far (writes only, at level Metadata), optionally filtered.

        The apiserver writes an event just after answering, so poll rather than read once.
        """
        events = []
        with contextlib.suppress(FileNotFoundError), self.audit_log.open() as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):
                    event = json.loads(line)
                    if predicate is None or predicate(event):
                        events.append(event)
        return events

    def node_ready(self, name: str) -> bool:
        try:
            status, node = self.request("GET", f"/api/v1/nodes/{name}")
        except OSError:
            return False
        if status != 200:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        # The node lifecycle controller removes its not-ready taint a moment after Ready; a
        # node registered with taints of its own keeps those.
        taints = [t for t in node.get("spec", {}).get("taints", []) if t.get("key", "").startswith("node.")]
        return ready and not taints


def https_healthz(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
