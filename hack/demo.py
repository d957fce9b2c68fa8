"""`make demo`: the MnistModel operator end to end on this machine, in a couple of minutes.

1. starts a real local control plane (hack/localcluster/: etcd, kube-apiserver,
   controller-manager, scheduler, kwok);
2. installs the MnistModel CRD and the operator's shipped RBAC (manifests/rbac + ingress/);
3. trains a small model on a subset of real MNIST into models/mnist/1, unless a version 1 is
   there already (`--full` trains the full model instead);
4. runs the operator as a local process, logged in as its ServiceAccount (a token minted with
   `kubectl create token`): it can do exactly what the shipped ClusterRoles allow;
5. applies manifests/samples/minimal.yaml in a namespace that enforces the `restricted` Pod
   Security Standard, and waits for the MnistModel to become Ready, printing its status;
6. kwok's pods run no containers, so the demo serves the version the sample asks for with the
   real `mnist-server` on 127.0.0.1 and sends it a real MNIST test digit it never trained on;
7. tears everything down, or with `--keep` leaves it running (`--down` stops it later).

Everything lives in .demo/ (git-ignored): the cluster's state, logs, the ServiceAccount's
kubeconfig. The helpers here (free_port, wait_for, install_rbac, service_account_kubeconfig,
start_operator) are shared with tests/integration/packaging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from localcluster import ClusterError, LocalCluster

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_STATE_DIR = REPO / ".demo"
SAMPLE = REPO / "manifests" / "samples" / "minimal.yaml"
OPERATOR_NAMESPACE = "mnist-operator-system"
DEMO_NAMESPACE = "mnist-demo"
SERVICE_ACCOUNT = "mnist-operator"
MODEL_NAME = "mnist"

T = TypeVar("T")


class DemoError(RuntimeError):
    """A step failed; the message says which and where its log is."""


# ----- helpers shared with the tests ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Poll `probe` until it returns something other than None (or False); DemoError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


def install_rbac(
    cluster: LocalCluster,
    namespace: str,
    *,
    exposure: str = "ingress",
    suffix: str = "",
    work: Path | None = None,
) -> str:
    """Apply manifests/rbac plus its exposure folder, bound to a ServiceAccount in `namespace`.

    Rendered through a throw-away kustomization (in `work`) that only sets the namespace (and,
    for tests sharing one cluster, a name suffix for the cluster-scoped roles); returns the
    ServiceAccount's name.
    """
    work = work or cluster.state_dir / f"rbac-{namespace}{suffix}"
    work.mkdir(parents=True, exist_ok=True)
    rbac = Path(os.path.relpath(REPO / "manifests" / "rbac", work))
    lines = [
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        # Quoted (JSON strings are YAML): a suffix like -887e33 would otherwise read as a number.
        f"namespace: {json.dumps(namespace)}",
        *([f"nameSuffix: {json.dumps(suffix)}"] if suffix else []),
        "resources:",
        f"  - {json.dumps(str(rbac))}",
        f"  - {json.dumps(str(rbac / exposure))}",
    ]
    (work / "kustomization.yaml").write_text("\n".join(lines) + "\n")
    rendered = cluster.kubectl("kustomize", str(work)).stdout
    cluster.kubectl("apply", "-f", "-", input=rendered)
    return SERVICE_ACCOUNT + suffix


def service_account_kubeconfig(
    cluster: LocalCluster, namespace: str, service_account: str, path: Path, duration: str = "4h"
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token from the TokenRequest API)."""
    token = cluster.kubectl(
        "create", "token", service_account, "-n", namespace, f"--duration={duration}"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {"server": cluster.api_url, "certificate-authority": str(cluster.ca_file)},
            }
        ],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": service_account}}],
        "current-context": "operator",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str
    health_url: str

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace: float = 15.0) -> int | None:
        return stop_process(self.process, grace)


def start_operator(
    kubeconfig: Path, log_path: Path, *, extra_env: dict[str, str] | None = None, detach: bool = False
) -> OperatorProcess:
    """`mnist-operator` as a local process with the given credentials; returns once it is live."""
    metrics_port, health_port = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MNIST_OPERATOR_BIND_ADDRESS": "127.0.0.1",
        "MNIST_OPERATOR_METRICS_PORT": str(metrics_port),
        "MNIST_OPERATOR_HEALTH_PORT": str(health_port),
        "MNIST_OPERATOR_LOG_FORMAT": "plain",
        **(extra_env or {}),
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(BIN / "mnist-operator")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=detach,
        )
    handle = OperatorProcess(
        process,
        log_path,
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        health_url=f"http://127.0.0.1:{health_port}/healthz",
    )

    def live() -> bool:
        if process.poll() is not None:
            raise DemoError(f"the operator exited with code {process.returncode}; see {log_path}")
        return http_get(handle.health_url)[0] == 200

    wait_for("the operator's liveness endpoint", live, timeout=60)
    return handle


def stop_process(process: subprocess.Popen[bytes], grace: float = 15.0) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


# ----- the demo ------------------------------------------------------------------------------


class Narrator:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.number = 0

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.number += 1
        print(f"\n== {self.number}. {title}", flush=True)
        began = time.monotonic()
        yield
        print(f"   done in {time.monotonic() - began:.1f} s (total {self.elapsed():.0f} s)", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @staticmethod
    def say(text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            print(f"   {line}", flush=True)


def ensure_model(models: Path, version: str, *, full: bool, subset: int, epochs: int, say: Narrator) -> None:
    target = models / MODEL_NAME / version
    if target.is_dir() and any(target.iterdir()):
        say.say(f"reusing {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")
        return
    command = [str(BIN / "mnist-train"), "--output", str(models), "--version", version]
    if not full:
        command += ["--subset", str(subset), "--epochs", str(epochs)]
    say.say("$ " + " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command)))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    say.say(done.stdout)
    if done.returncode != 0:
        raise DemoError(f"mnist-train failed ({done.returncode}):\n{done.stderr[-2000:]}")


def sample() -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    return loaded


def model_status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    found = cluster.kubectl("get", "mnistmodel", name, "-n", DEMO_NAMESPACE, "-o", "json")
    body: dict[str, Any] = json.loads(found.stdout)
    return body


def ready_condition(body: dict[str, Any]) -> dict[str, Any] | None:
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            found: dict[str, Any] = condition
            return found
    return None


def describe_status(body: dict[str, Any]) -> str:
    status = body.get("status") or {}
    lines = [
        f"observedGeneration {status.get('observedGeneration')} "
        f"(generation {body['metadata']['generation']}), "
        f"modelVersion {status.get('modelVersion')}, replicas {status.get('readyReplicas')}/"
        f"{status.get('replicas')} ready, url {status.get('url')}",
        f"{'CONDITION':<16} {'STATUS':<8} {'REASON':<26} MESSAGE",
    ]
    for c in status.get("conditions") or []:
        lines.append(f"{c['type']:<16} {c['status']:<8} {c['reason']:<26} {c.get('message', '')}")
    return "\n".join(lines)


def ascii_digit(image: Any) -> str:
    """A 28x28 image in 14 text rows (two pixel rows per character)."""
    rows = []
    for y in range(0, 28, 2):
        row = ""
        for x in range(28):
            top, bottom = image[y][x] > 0.5, image[y + 1][x] > 0.5
            row += "█" if top and bottom else "▀" if top else "▄" if bottom else " "
        rows.append(row.rstrip())
    return "\n".join(rows)


def serve_and_predict(models: Path, version: str, state: Path, digit_index: int, say: Narrator) -> None:
    from mnist_server.data import load_mnist

    port = free_port()
    log_path = state / "server.log"
    env = {
        **os.environ,
        "MNIST_SERVER_MODEL_ROOT": str(models),
        "MNIST_SERVER_MODEL_NAME": MODEL_NAME,
        "MNIST_SERVER_MODEL_VERSION": version,
        "MNIST_SERVER_HOST": "127.0.0.1",
        "MNIST_SERVER_PORT": str(port),
        "MNIST_SERVER_WORKERS": "1",
    }
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            [str(BIN / "mnist-server")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        say.say(f"mnist-server serving {MODEL_NAME} version {version} on {url} (log {log_path})")

        def ready() -> bool:
            if server.poll() is not None:
                raise DemoError(f"mnist-server exited with code {server.returncode}; see {log_path}")
            return http_get(url + "/readyz")[0] == 200

        wait_for("mnist-server /readyz", ready, timeout=180, interval=0.5)
        test = load_mnist().test
        index = digit_index % len(test)
        image, label = test.images[index], int(test.labels[index])
        say.say(f"MNIST test image #{index} (true label {label}):\n{ascii_digit(image)}")
        request = urllib.request.Request(
            url + "/predict",
            data=json.dumps({"inputs": image.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        say.say(f"$ curl -X POST {url}/predict -d '{{\"inputs\": <28x28 floats>}}'\n{json.dumps(answer)}")
        verdict = "correct" if answer["prediction"] == label else f"wrong (the label is {label})"
        say.say(f"prediction {answer['prediction']} with probability {answer['probability']:.3f}: {verdict}")
    finally:
        stop_process(server)


@dataclass
class Kept:
    """What `--keep` leaves running, so that `--down` can stop it."""

    operator_pid: int

    @classmethod
    def path(cls, state: Path) -> Path:
        return state / "demo.json"


class Demo:
    """The demo's steps, in order; `run` strings them together and always cleans up."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state: Path = args.state_dir.resolve()
        self.models: Path = args.models.resolve()
        self.narrator = Narrator()
        self.cluster = LocalCluster(self.state / "cluster", bound_to_parent=not args.keep)
        self.operator: OperatorProcess | None = None

    def start_cluster(self) -> None:
        if self.cluster.is_running():
            raise DemoError(
                f"a demo is already running from {self.state}: `python hack/demo.py --down` first"
            )
        self.cluster.start()
        self.narrator.say(f"API server {self.cluster.api_url}; kubeconfig {self.cluster.kubeconfig}")
        self.narrator.say(self.cluster.kubectl("get", "nodes", "-o", "wide").stdout)

    def install(self) -> Path:
        kubectl = self.cluster.kubectl
        self.narrator.say(kubectl("apply", "-k", str(REPO / "crds")).stdout)
        kubectl("wait", "--for=condition=Established", "crd/mnistmodels.aidevsecops.dev")
        kubectl("create", "namespace", OPERATOR_NAMESPACE)
        account = install_rbac(self.cluster, OPERATOR_NAMESPACE)
        path = self.state / "operator.kubeconfig"
        kubeconfig = service_account_kubeconfig(self.cluster, OPERATOR_NAMESPACE, account, path)
        self.narrator.say(f"ServiceAccount {OPERATOR_NAMESPACE}/{account}; its token is in {kubeconfig}")
        return kubeconfig

    def run_operator(self, kubeconfig: Path) -> OperatorProcess:
        self.operator = start_operator(kubeconfig, self.state / "operator.log", detach=self.args.keep)
        self.narrator.say(
            f"pid {self.operator.process.pid}; log {self.operator.log_path}; "
            f"metrics {self.operator.metrics_url}\n"
            "(kwok runs no containers, so the operator runs here instead of as a Deployment)"
        )
        return self.operator

    def apply_sample(self) -> dict[str, Any]:
        kubectl = self.cluster.kubectl
        namespace = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": DEMO_NAMESPACE,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        }
        kubectl("apply", "-f", "-", input=json.dumps(namespace))
        self.narrator.say(kubectl("apply", "-n", DEMO_NAMESPACE, "-f", str(SAMPLE)).stdout)
        name = sample()["metadata"]["name"]

        def is_ready() -> dict[str, Any] | None:
            body = model_status(self.cluster, name)
            condition = ready_condition(body)
            current = (body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"]
            return body if current and condition and condition["status"] == "True" else None

        try:
            body = wait_for(f"MnistModel {name} Ready", is_ready, timeout=self.args.timeout, interval=0.5)
        except DemoError:
            self.narrator.say(describe_status(model_status(self.cluster, name)))
            raise
        self.narrator.say(describe_status(body))
        listing = kubectl("get", "mnistmodel,deployment,service,pods", "-n", DEMO_NAMESPACE, "-o", "wide")
        self.narrator.say(listing.stdout)
        return body

    def show_operator_metrics(self, operator: OperatorProcess) -> None:
        _, text = http_get(operator.metrics_url)
        wanted = ("mnist_operator_reconciles_total{", "mnist_operator_api_writes_total{")
        self.narrator.say("\n".join(line for line in text.splitlines() if line.startswith(wanted)))

    def leave_running(self, operator: OperatorProcess) -> None:
        Kept.path(self.state).write_text(json.dumps({"operator_pid": operator.process.pid}) + "\n")
        print(
            f"\nLeft running (stop with `python hack/demo.py --down`):\n"
            f"  export KUBECONFIG={self.cluster.kubeconfig}\n"
            f'  export PATH="{self.cluster.bin_dir}:$PATH"\n'
            f"  kubectl get mnistmodels -A -o wide\n"
            f"  operator pid {operator.process.pid}, log {operator.log_path}"
        )

    def run(self) -> int:
        step, args = self.narrator.step, self.args
        self.state.mkdir(parents=True, exist_ok=True)
        kept = False
        try:
            with step("Start a local Kubernetes control plane (etcd, apiserver, controllers, kwok)"):
                self.start_cluster()
            with step("Install the MnistModel CRD and the operator's RBAC (ServiceAccount, ClusterRoles)"):
                kubeconfig = self.install()
            version = str(sample()["spec"]["modelVersion"])
            with step(
                f"Make sure model version {version} (the sample's spec.modelVersion) is in {self.models}"
            ):
                ensure_model(
                    self.models,
                    version,
                    full=args.full,
                    subset=args.subset,
                    epochs=args.epochs,
                    say=self.narrator,
                )
            with step("Run the operator as a local process, as its ServiceAccount"):
                operator = self.run_operator(kubeconfig)
            with step(f"Apply the sample MnistModel ({SAMPLE.relative_to(REPO)}) and wait until it is Ready"):
                body = self.apply_sample()
            asked = body["spec"]["modelVersion"]
            with step(f"Serve version {asked} (what the sample asks for) and classify a real test digit"):
                serve_and_predict(self.models, asked, self.state, args.digit_index, self.narrator)
            with step("The operator's own metrics"):
                self.show_operator_metrics(operator)
            if args.keep:
                self.leave_running(operator)
                kept = True
            print(f"\nDemo finished in {self.narrator.elapsed():.0f} s.")
            return 0
        except (DemoError, ClusterError, subprocess.CalledProcessError) as exc:
            detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else ""
            print(f"\ndemo failed: {exc}\n{detail}", file=sys.stderr)
            if self.operator is not None:
                print(f"--- last lines of {self.operator.log_path} ---", file=sys.stderr)
                print("\n".join(self.operator.log().splitlines()[-30:]), file=sys.stderr)
            return 1
        finally:
            if not kept:
                if self.operator is not None:
                    self.operator.stop()
                self.cluster.stop()
                shutil.rmtree(self.state / "cluster", ignore_errors=True)


def down(state: Path) -> int:
    kept = Kept.path(state)
    if kept.exists():
        pid = int(json.loads(kept.read_text())["operator_pid"])
        with contextlib.suppress(ProcessLookupError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}").exists() else b""
            if b"mnist-operator" in cmdline:
                os.kill(pid, signal.SIGTERM)
        kept.unlink()
    cluster = LocalCluster(state / "cluster")
    if cluster.is_running():
        LocalCluster.attach(cluster.state_dir).stop()
    shutil.rmtree(state / "cluster", ignore_errors=True)
    print(f"stopped the demo in {state}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster and the operator running")
    parser.add_argument("--down", action="store_true", help="stop what an earlier --keep left running")
    parser.add_argument("--full", action="store_true", help="train the full model if none exists (minutes)")
    parser.add_argument("--models", type=Path, default=REPO / "models", help="model repository (%(default)s)")
    parser.add_argument("--subset", type=int, default=6000, help="training images for the quick model")
    parser.add_argument("--epochs", type=int, default=2, help="epochs for the quick model")
    parser.add_argument("--digit-index", type=int, default=0, help="which MNIST test image to classify")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for Ready")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="(%(default)s)")
    args = parser.parse_args(argv)
    if args.down:
        return down(args.state_dir.resolve())
    return Demo(args).run()


if __name__ == "__main__":
    sys.exit(main())
