"""`make demo`: the MnistModel operator end to end on this machine.

1. starts a real local cluster (hack/localcluster/: etcd, kube-apiserver, controller-manager,
   scheduler, kwok and, where the host can run one, a real node: containerd, kubelet,
   kube-proxy);
2. trains a small model on a subset of real MNIST into models/mnist/1, unless a version 1 is
   there already (`--full` trains the full model instead);

With the real node:
3. builds the operator and server images from the shipped Dockerfiles with buildah (the server
   image carries models/), cached by their inputs, and loads them into the node's containerd;
4. installs the operator in-cluster with the shipped kustomize (kustomize/overlays/local): the
   CRD, RBAC, the operator's Deployment under its own ServiceAccount;
5. applies manifests/samples/minimal.yaml, pinned to the real node, in a namespace that enforces
   the `restricted` Pod Security Standard, and waits for the MnistModel to become Ready;
6. sends a real MNIST test digit the model never trained on through the model's Service and
   prints the answer, the pod and the node that gave it, and the URL it used.

Where the host cannot run a real node (not root, a missing package) the demo says why and does
what it can without one: it installs the CRD and RBAC, runs the operator as a local process
logged in as its ServiceAccount, the sample's pods land on kwok (which runs no containers), and
a local `mnist-server` on 127.0.0.1 answers the digit.

Either way it tears everything down at the end, or with `--keep` leaves it running (`--down`
stops it later).

Everything lives in .demo/ (git-ignored): the cluster's state, logs, the ServiceAccount's
kubeconfig. The helpers here (install_rbac, service_account_kubeconfig,
start_operator) are shared with tests/integration/packaging.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from devkit import WaitTimeoutError, free_port, wait_for, wait_until_ok

from localcluster import ClusterError, LocalCluster, images, node
from localcluster.images import Images

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_STATE_DIR = REPO / ".demo"
SAMPLE = REPO / "manifests" / "samples" / "minimal.yaml"
LOCAL_OVERLAY = REPO / "kustomize" / "overlays" / "local"
FIXTURE_CRDS = REPO / "tests" / "fixtures" / "crds"
OPERATOR_NAMESPACE = "mnist-operator-system"
DEMO_NAMESPACE = "mnist-demo"
SERVICE_ACCOUNT = "mnist-operator"
MODEL_NAME = "mnist"

T = TypeVar("T")


class DemoError(RuntimeError):
    """A step failed; the message says which and where its log is."""


# ----- helpers shared with the tests ---------------------------------------------------------


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
    wait_until_ok(handle.health_url, "the operator live", 60, process=process, log=lambda: f"log: {log_path}")
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
        wait_until_ok(
            url + "/readyz", "mnist-server ready", 180, process=server, log=lambda: f"log: {log_path}"
        )
        classify_a_test_digit(url, digit_index, say)
    finally:
        stop_process(server)


def install_in_cluster(cluster: LocalCluster, built: Images, workdir: Path) -> list[str]:
    """The shipped install (kustomize/overlays/local) with the built images' tags set on top;
    returns the operator's pods once its Deployment has rolled out."""
    # The base ships a ServiceMonitor and a PrometheusRule: their APIs must be served (the
    # Prometheus operator is not part of this cluster; its CRDs are enough for the objects).
    for crd in ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(FIXTURE_CRDS / crd))
    operator_name, operator_tag = built.operator.rsplit(":", 1)
    server_image = {"name": "operator", "env": [{"name": "MNIST_OPERATOR_IMAGE", "value": built.server}]}
    patch = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mnist-operator", "namespace": OPERATOR_NAMESPACE},
        "spec": {"template": {"spec": {"containers": [server_image]}}},
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes only relative paths to other kustomizations.
        "resources": [os.path.relpath(LOCAL_OVERLAY, workdir)],
        "images": [{"name": operator_name, "newTag": operator_tag}],
        "patches": [{"patch": json.dumps(patch)}],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    # JSON is YAML: kustomize reads it as is.
    (workdir / "kustomization.yaml").write_text(json.dumps(kustomization, indent=2) + "\n")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(workdir), timeout=120)
    cluster.kubectl("rollout", "status", "-n", OPERATOR_NAMESPACE, "deployment/mnist-operator",
                    "--timeout=180s", timeout=200)  # fmt: skip
    pods = json.loads(
        cluster.kubectl(
            "get",
            "pods",
            "-n",
            OPERATOR_NAMESPACE,
            "-l",
            "app.kubernetes.io/name=mnist-operator",
            "-o",
            "json",
        ).stdout
    )["items"]
    running = [str(p["metadata"]["name"]) for p in pods if not p["metadata"].get("deletionTimestamp")]
    if not running:
        raise DemoError("the operator's Deployment rolled out, but no pod of it is running")
    return running


def on_real_node(doc: dict[str, Any]) -> dict[str, Any]:
    """A MnistModel (as parsed YAML) whose pods run on the local cluster's real node."""
    spec = {**doc["spec"], "nodeSelector": dict(node.NODE_SELECTOR), "tolerations": [dict(node.TOLERATION)]}
    return {**doc, "spec": spec}


def classify_a_test_digit(url: str, digit_index: int, say: Narrator, where: str = "") -> None:
    """Send a real MNIST test digit (one no model here trained on) to `url`/predict and say
    what came back and whether it is right."""
    from mnist_server.data import load_mnist

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
    say.say(f"$ curl -X POST {url}/predict -d '{{\"inputs\": <28x28 floats>}}'{where}\n{json.dumps(answer)}")
    verdict = "correct" if answer["prediction"] == label else f"wrong (the label is {label})"
    say.say(f"prediction {answer['prediction']} with probability {answer['probability']:.3f}: {verdict}")


def predict_through_service(cluster: LocalCluster, name: str, digit_index: int, say: Narrator) -> None:

    service = json.loads(cluster.kubectl("get", "service", name, "-n", DEMO_NAMESPACE, "-o", "json").stdout)
    url = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    # Ready follows the pods; kube-proxy routes the new Service a moment later.
    wait_until_ok(url + "/readyz", f"the Service {name} routing to a ready pod", 60)
    classify_a_test_digit(url, digit_index, say, where="   # the Service's ClusterIP")
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", DEMO_NAMESPACE, "-l", f"app.kubernetes.io/instance={name}", "-o", "json"
        ).stdout
    )["items"]
    for pod in pods:
        say.say(f"answered by pod {pod['metadata']['name']} ({pod['status'].get('podIP')}) on node "
                f"{pod['spec'].get('nodeName')}, image {pod['spec']['containers'][0]['image']}")  # fmt: skip


@dataclass
class Kept:
    """What `--keep` leaves running, so that `--down` can stop it."""

    # None when the operator runs in-cluster (the cluster's teardown stops it).
    operator_pid: int | None

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
        if not self.cluster.real_node:
            self.narrator.say(f"no real node, so no container will run: {self.cluster.real_node_reason}")

    def build_images(self) -> Images:
        log = self.state / "image-build.log"
        self.narrator.say(f"(cached by their inputs: minutes the first time, seconds after; log {log})")
        built = images.build_all(log, models=self.models)
        for ref in (built.operator, built.server):
            self.cluster.import_image(ref)
        self.narrator.say(
            f"operator image {built.operator}\nserver image   {built.server} (carries {self.models})"
        )
        return built

    def install_in_cluster(self, built: Images) -> None:
        pods = ", ".join(install_in_cluster(self.cluster, built, self.state / "install"))
        listing = self.cluster.kubectl(
            "get", "deployment,pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"
        ).stdout
        self.narrator.say(
            f"operator pods {pods}, as ServiceAccount {OPERATOR_NAMESPACE}/{SERVICE_ACCOUNT}\n{listing}"
        )

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
        doc = on_real_node(sample()) if self.cluster.real_node else sample()
        self.narrator.say(kubectl("apply", "-n", DEMO_NAMESPACE, "-f", "-", input=json.dumps(doc)).stdout)
        name = doc["metadata"]["name"]

        def is_ready() -> dict[str, Any] | None:
            body = model_status(self.cluster, name)
            condition = ready_condition(body)
            current = (body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"]
            return body if current and condition and condition["status"] == "True" else None

        try:
            body = wait_for(is_ready, f"MnistModel {name} Ready", timeout=self.args.timeout, interval=0.5)
        except WaitTimeoutError:
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

    def leave_running(self, operator: OperatorProcess | None) -> None:
        pid = operator.process.pid if operator is not None else None
        Kept.path(self.state).write_text(json.dumps({"operator_pid": pid}) + "\n")
        where = (
            f"operator pid {pid}, log {operator.log_path}"
            if operator is not None
            else f"operator: kubectl logs -n {OPERATOR_NAMESPACE} deployment/mnist-operator"
        )
        print(
            f"\nLeft running (stop with `python hack/demo.py --down`):\n"
            f"  export KUBECONFIG={self.cluster.kubeconfig}\n"
            f'  export PATH="{self.cluster.bin_dir}:$PATH"\n'
            f"  kubectl get mnistmodels -A -o wide\n"
            f"  {where}"
        )

    def run(self) -> int:
        step, args = self.narrator.step, self.args
        self.state.mkdir(parents=True, exist_ok=True)
        kept = False
        try:
            with step("Start a local Kubernetes cluster (etcd, apiserver, controllers, kwok, a real node)"):
                self.start_cluster()
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
            kept = self.run_on_real_node() if self.cluster.real_node else self.run_without_real_node()
            print(f"\nDemo finished in {self.narrator.elapsed():.0f} s.")
            return 0
        except (DemoError, WaitTimeoutError, ClusterError, subprocess.CalledProcessError) as exc:
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

    def run_on_real_node(self) -> bool:
        step = self.narrator.step
        with step("Build the operator and server images from the shipped Dockerfiles (buildah)"):
            built = self.build_images()
        with step("Install the operator in-cluster with the shipped kustomize (kustomize/overlays/local)"):
            self.install_in_cluster(built)
        with step(f"Apply the sample MnistModel ({SAMPLE.relative_to(REPO)}), pinned to the real node"):
            body = self.apply_sample()
        with step("Classify a real MNIST test digit through the model's Service"):
            predict_through_service(
                self.cluster, body["metadata"]["name"], self.args.digit_index, self.narrator
            )
        if self.args.keep:
            self.leave_running(None)
            return True
        return False

    def run_without_real_node(self) -> bool:
        step, args = self.narrator.step, self.args
        with step("Install the MnistModel CRD and the operator's RBAC (ServiceAccount, ClusterRoles)"):
            kubeconfig = self.install()
        with step("Run the operator as a local process, as its ServiceAccount (no node to run it on)"):
            operator = self.run_operator(kubeconfig)
        with step(f"Apply the sample MnistModel ({SAMPLE.relative_to(REPO)}) and wait until it is Ready"):
            body = self.apply_sample()
        asked = body["spec"]["modelVersion"]
        with step(f"Serve version {asked} locally (kwok runs no containers) and classify a real test digit"):
            serve_and_predict(self.models, asked, self.state, args.digit_index, self.narrator)
        with step("The operator's own metrics"):
            self.show_operator_metrics(operator)
        if args.keep:
            self.leave_running(operator)
            return True
        return False


def down(state: Path) -> int:
    kept = Kept.path(state)
    pid = json.loads(kept.read_text()).get("operator_pid") if kept.exists() else None
    if pid is not None:
        pid = int(pid)
        with contextlib.suppress(ProcessLookupError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}").exists() else b""
            if b"mnist-operator" in cmdline:
                os.kill(pid, signal.SIGTERM)
    kept.unlink(missing_ok=True)
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
