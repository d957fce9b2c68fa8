"""Credentials of a local cluster: a CA, the API server's certificates, tokens and kubeconfigs.

Every component gets its own static token so the audit log says who wrote what; all are in
system:masters because this cluster is a local test bed, not a security boundary.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import textwrap
from collections.abc import Iterable
from pathlib import Path

from localcluster.errors import ClusterError


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ClusterError("openssl", f"`openssl {' '.join(args)}` failed: {done.stderr.strip()}")


def _sign(pki: Path, name: str, subject: str, extensions: str) -> None:
    (pki / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", subject, cwd=pki,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "825", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki,
    )  # fmt: skip


def write_certificates(pki: Path, server_ips: Iterable[str]) -> None:
    """CA, the API server's serving certificate (also used by the controller-manager and
    scheduler), its client certificate for kubelets, and the service-account key pair."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "3650", "-subj", "/CN=mnist-local-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=pki,
    )  # fmt: skip
    names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"]  # fmt: skip
    sans = ",".join([*(f"DNS:{n}" for n in names), *(f"IP:{ip}" for ip in server_ips)])
    _sign(
        pki,
        "serving",
        "/CN=kube-apiserver",
        textwrap.dedent(f"""\
            basicConstraints=critical,CA:FALSE
            keyUsage=critical,digitalSignature,keyEncipherment
            extendedKeyUsage=serverAuth
            subjectKeyIdentifier=hash
            authorityKeyIdentifier=keyid,issuer
            subjectAltName={sans}
        """),
    )
    # For `kubectl logs` and probes through the API server: kubelets trust the cluster CA.
    _sign(
        pki,
        "apiserver-kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        textwrap.dedent("""\
            basicConstraints=critical,CA:FALSE
            keyUsage=critical,digitalSignature,keyEncipherment
            extendedKeyUsage=clientAuth
        """),
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_token_file(pki: Path, tokens: dict[str, str]) -> Path:
    lines = [f'{token},{user},{user},"system:masters"' for user, token in tokens.items()]
    token_file = pki / "tokens.csv"
    token_file.write_text("\n".join(lines) + "\n")
    token_file.chmod(0o600)
    return token_file


def new_token() -> str:
    return secrets.token_hex(24)


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> None:
    # JSON is YAML: no dependency needed to write it, and kubectl and kopf read it as is.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "local", "context": {"cluster": "local", "user": user, "namespace": "default"}}
        ],
        "current-context": "local",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
