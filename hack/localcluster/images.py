"""The project's container images, built locally with buildah (no Docker daemon, no registry).

Three images, each cached by a digest of its inputs so a warm run builds nothing:

1. a Debian bookworm base with Python (debootstrap from the host's own apt mirror), standing in
   for the `python:3.11-slim-bookworm` that the Dockerfiles' `FROM` names by default; it is
   passed as the Dockerfiles' own `PYTHON_IMAGE` build argument, so nothing impersonates an
   upstream image;
2. `Dockerfile.server` and 3. `Dockerfile.operator`, built unchanged.

Builds run with the host's pip configuration and CA bundle mounted read-only into the RUN
steps (this machine's package clients trust an extra CA that a container does not); none of
that lands in an image. `import_into` loads an image into a containerd namespace for the node.

    python -m localcluster.images build [--models DIR]   # prints the three image references
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster.errors import ClusterError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mnist-operator" / "images"

BASE_REPOSITORY = "localhost/mnist-python-base"
SERVER_REPOSITORY = "localhost/mnist-server"
OPERATOR_REPOSITORY = "localhost/mnist-operator"

SUITE = "bookworm"
# What the Dockerfiles need from a Python base: `python -m venv` and TLS for pip.
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# Builds of each image kept in buildah's store: the tests' and the demo's server images differ
# (their model repositories do), and neither should evict the other.
KEEP_BUILDS = 3
# Part of the base image's cache key: bump it when the recipe below changes.
BASE_RECIPE = "2"
# Docs, man pages, locales and apt's lists are dead weight in an image (and in pod start-up).
_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/lib/apt/lists",
         "var/cache/apt", "var/cache/debconf/templates.dat-old", "var/log")  # fmt: skip

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# buildah in a root shell on these machines: RLIMIT_NOFILE above what the kernel lets a
# container set makes runc fail ("error setting rlimit type 7").
_ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


@dataclass(frozen=True)
class Images:
    base: str
    server: str
    operator: str


def _run(argv: Sequence[str], what: str, *, quiet: bool = False, **kwargs: object) -> str:
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-30:])
        raise ClusterError("images", f"{what}: `{' '.join(argv[:4])} ...` exited {done.returncode}", tail)
    return str(done.stdout)


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:12]


def _tree_bytes(root: Path, rel: str) -> Iterable[bytes]:
    """Path names and contents of a context entry, in a stable order (caches skipped)."""
    path = root / rel
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if "__pycache__" in f.parts or f.suffix == ".pyc" or ".egg-info" in str(f):
            continue
        yield str(f.relative_to(root)).encode()
        yield f.read_bytes()


def image_exists(ref: str) -> bool:
    return (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", ref], capture_output=True, check=False
        ).returncode
        == 0
    )


def apt_mirror() -> str:
    """The Debian mirror this host's apt uses (never a hard-coded host)."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2 and "security" not in line:
                return next(w for w in words[1:] if "://" in w)
    raise ClusterError("images", "no Debian mirror found in /etc/apt/sources.list(.d): debootstrap needs one")


def check_tools() -> None:
    missing = [t for t in ("buildah", "debootstrap") if shutil.which(t) is None]
    if missing:
        raise ClusterError(
            "images",
            f"{', '.join(missing)} not installed (Debian packages buildah and debootstrap; see .ci/run)",
        )


# A server image build writes its layer twice (the container's, then the committed copy):
# about 4 GB with TensorFlow, plus what containerd unpacks when the node imports it.
MIN_FREE_BYTES = 8 * 1024**3
BUILDAH_STORE = Path("/var/lib/containers/storage")


def _check_disk(what: str) -> None:
    """Fail before a build, with the figures, rather than in its commit with ENOSPC."""
    store = BUILDAH_STORE if BUILDAH_STORE.exists() else Path("/var/lib")
    free, needed = shutil.disk_usage(store).free / 1024**3, MIN_FREE_BYTES / 1024**3
    if free < needed:
        raise ClusterError(
            "images",
            f"{what}: {free:.1f} GB free on {store}, a build needs {needed:.0f} GB (old builds are"
            f" pruned already: buildah and containerd keep {KEEP_BUILDS} of each image; look for"
            " other large files on that disk)",
        )


# ----- the base image ------------------------------------------------------------------------


def base_reference() -> str:
    key = _digest([SUITE.encode(), " ".join(BASE_PACKAGES).encode(), BASE_RECIPE.encode()])
    return f"{BASE_REPOSITORY}:{SUITE}-{key}"


def build_base(log: Path) -> str:
    ref = base_reference()
    if image_exists(ref):
        return ref
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mnist-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs),
             apt_mirror()],
            "debootstrap",
        )  # fmt: skip
        for rel in _TRIM:
            shutil.rmtree(rootfs / rel, ignore_errors=True)
        (rootfs / "var/log").mkdir(exist_ok=True)
        container = _run(["buildah", "from", "scratch"], "buildah from").strip()
        try:
            # A tar stream keeps ownership, modes and device nodes as debootstrap made them.
            mount = _run(["buildah", "mount", container], "buildah mount").strip()
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE)
            _run(["tar", "-C", mount, "-xpf", "-", "--numeric-owner"], "untar the base", stdin=tar.stdout)
            tar.wait()
            _run(["buildah", "umount", container], "buildah umount")
            _run(
                ["buildah", "config", "--env", f"PATH={_PATH}", "--env", "LANG=C.UTF-8", "--cmd", "python3",
                 "--label",
                 f"org.opencontainers.image.description=Debian {SUITE} with Python, for local builds",
                 container],
                "buildah config",
            )  # fmt: skip
            _run(["buildah", "commit", "--rm", container, ref], "buildah commit")
        except BaseException:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
            raise
    _record(log, "base", ref, time.monotonic() - started)
    return ref


# ----- the pod sandbox ("pause") image ----------------------------------------------------------

PAUSE_REPOSITORY = "localhost/mnist-pause"
PAUSE_SOURCE = Path(__file__).resolve().parent / "pause" / "pause.c"


def pause_reference() -> str:
    return f"{PAUSE_REPOSITORY}:{_digest([PAUSE_SOURCE.read_bytes()])}"


def build_pause(log: Path) -> str:
    """A static pause binary from pause/pause.c in an image of its own (seconds; cached)."""
    ref = pause_reference()
    if image_exists(ref):
        return ref
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mnist-pause-") as tmp:
        binary = Path(tmp) / "pause"
        _run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(PAUSE_SOURCE)], "compile pause.c")
        container = _run(["buildah", "from", "scratch"], "buildah from").strip()
        try:
            _run(["buildah", "copy", "--chmod", "0755", container, str(binary), "/pause"], "buildah copy")
            _run(["buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container],
                 "buildah config")  # fmt: skip
            _run(["buildah", "commit", "--rm", container, ref], "buildah commit")
        except BaseException:
            subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
            raise
    return ref


# ----- the Dockerfiles ----------------------------------------------------------------------


def _context_entries(dockerfile: str) -> list[str]:
    """What each Dockerfile COPYs from the context (.dockerignore lets in no more than this)."""
    common = ["pyproject.toml", "README.md", ".dockerignore", dockerfile]
    if dockerfile == "Dockerfile.server":
        return [*common, "model_server", "models", "wheels"]
    return [*common, "operator"]


def dockerfile_reference(dockerfile: str, repository: str, base: str, build_args: dict[str, str],
                         context: Path = REPO_ROOT) -> str:  # fmt: skip
    parts: list[bytes] = [base.encode(), json.dumps(build_args, sort_keys=True).encode()]
    for rel in _context_entries(dockerfile):
        if (context / rel).exists():
            parts.extend(_tree_bytes(context, rel))
    return f"{repository}:dev-{_digest(parts)}"


def build_dockerfile(dockerfile: str, ref: str, base: str, build_args: dict[str, str], *, log: Path,
                     context: Path = REPO_ROOT) -> str:  # fmt: skip
    if image_exists(ref):
        return ref
    _check_disk(dockerfile)
    started = time.monotonic()
    # Docker's image format, as `docker build` makes: the OCI format has no HEALTHCHECK.
    argv = ["buildah", "build", "--pull=never", "--layers", "--network=host", "--format=docker", *_ULIMITS,
            "-f", str(context / dockerfile), "-t", ref, "--build-arg", f"PYTHON_IMAGE={base}"]  # fmt: skip
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    # The host's package-client trust, for RUN steps only (volumes never land in a layer).
    for host_path in ("/etc/pip.conf", "/etc/ssl/certs"):
        if Path(host_path).exists():
            argv += ["-v", f"{host_path}:{host_path}:ro"]
    with log.open("a") as out:
        out.write(f"# {' '.join(argv)} {context}\n")
        out.flush()
        done = subprocess.run([*argv, str(context)], stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise ClusterError("images", f"{dockerfile} did not build (exit {done.returncode})", _tail(log))
    _record(log, dockerfile, ref, time.monotonic() - started)
    prune(ref.rsplit(":", 1)[0])
    return ref


def prune(repository: str, keep: int = KEEP_BUILDS) -> None:
    """Remove all but the newest `keep` builds of a repository (a server image is ~1.9 GB, and
    every source change makes a new one), and the layers nothing refers to any more."""
    builds = sorted(
        ((image["createdatraw"], name) for image in _buildah_images() for name in image.get("names") or []
         if name.startswith(repository + ":")),
        reverse=True,
    )  # fmt: skip
    for _, name in builds[keep:]:
        subprocess.run(["buildah", "rmi", name], capture_output=True, check=False)
    if builds[keep:]:
        subprocess.run(["buildah", "rmi", "--prune"], capture_output=True, check=False)


def granian_wheel(log: Path) -> Path:
    """The server's Granian (third_party/granian), in the context's wheels/ for Dockerfile.server
    to install: hack/build-granian.sh, cached (a no-op when warm). The base's Python is the
    host's Debian bookworm 3.11, so a wheel built for this interpreter fits it."""
    with log.open("a") as out:
        done = subprocess.run(["bash", str(REPO_ROOT / "hack" / "build-granian.sh"), sys.executable],
                              stdout=subprocess.PIPE, stderr=out, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise ClusterError("images", f"hack/build-granian.sh failed (exit {done.returncode})", _tail(log))
    return Path(done.stdout.strip())


def build_all(log: Path, *, models: Path | None = None) -> Images:
    """The base image and both shipped images (each only if its inputs changed).

    With `models`, the server image carries that model repository (MODEL_SOURCE=copy); without,
    it trains version 1 during the build (the Dockerfile's default).
    """
    check_tools()
    log.parent.mkdir(parents=True, exist_ok=True)
    granian_wheel(log)
    base = build_base(log)
    operator_ref = dockerfile_reference("Dockerfile.operator", OPERATOR_REPOSITORY, base, {})
    build_dockerfile("Dockerfile.operator", operator_ref, base, {}, log=log)
    if models is None:
        server_args: dict[str, str] = {}
        server_ref = dockerfile_reference("Dockerfile.server", SERVER_REPOSITORY, base, server_args)
        server = build_dockerfile("Dockerfile.server", server_ref, base, server_args, log=log)
    else:
        server = _build_server_from(models, base, log)
    return Images(base=base, server=server, operator=operator_ref)


def _build_server_from(models: Path, base: str, log: Path) -> str:
    """Dockerfile.server with MODEL_SOURCE=copy, on a context whose models/ is `models`.

    The context is a copy of the Dockerfile's own inputs, so the repository's models/ (the
    user's) is never touched.
    """
    args = {"MODEL_SOURCE": "copy"}
    with tempfile.TemporaryDirectory(prefix="mnist-context-") as tmp:
        context = Path(tmp)
        for rel in _context_entries("Dockerfile.server"):
            if rel == "models":
                continue
            src = REPO_ROOT / rel
            if src.is_dir():
                shutil.copytree(
                    src, context / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                shutil.copy2(src, context / rel)
        shutil.copytree(models, context / "models", symlinks=False)
        ref = dockerfile_reference("Dockerfile.server", SERVER_REPOSITORY, base, args, context)
        return build_dockerfile("Dockerfile.server", ref, base, args, log=log, context=context)


# ----- a quick model repository for tests ---------------------------------------------------

# Two versions that differ (seeds), trained on a subset in about half a minute each: enough
# for real predictions (about 98 % on the test set) and for a rollout from one to the other.
QUICK_VERSIONS = {"1": 1, "2": 2}
QUICK_ARGS = ("--epochs", "1", "--subset", "20000", "--quiet")
_TRAINER_SOURCES = ("training.py", "data.py", "export.py", "repository.py", "backends/onnx_export.py")


def quick_models(trainer: Path) -> Path:
    """A model repository with QUICK_VERSIONS, trained once and cached by the trainer's sources.

    Cached so that the server image built from it keeps its cache key between runs (a new
    training would write new bytes, and so a new image).
    """
    package = REPO_ROOT / "model_server" / "mnist_server"
    key = _digest(
        [*(package.joinpath(rel).read_bytes() for rel in _TRAINER_SOURCES), " ".join(QUICK_ARGS).encode()]
    )
    root = CACHE_DIR.parent / "quick-models" / key
    if all((root / "mnist" / v / "model.onnx").exists() for v in QUICK_VERSIONS):
        return root
    for version, seed in QUICK_VERSIONS.items():
        if (root / "mnist" / version / "model.onnx").exists():
            continue
        shutil.rmtree(root / "mnist" / version, ignore_errors=True)
        _run([str(trainer), "--output", str(root), "--version", version, "--seed", str(seed), *QUICK_ARGS],
             f"train quick model version {version}")  # fmt: skip
    return root


# ----- into containerd ----------------------------------------------------------------------


def import_into(ref: str, containerd_socket: Path, ctr: str = "ctr", namespace: str = "k8s.io") -> None:
    """Load an image from buildah's store into containerd (skipped when it is there already),
    and drop the builds of its repository that buildah no longer keeps."""
    ctr_ns = [ctr, "--address", str(containerd_socket), "-n", namespace]
    repository = ref.rsplit(":", 1)[0]
    listed = _run([*ctr_ns, "images", "ls", "-q"], "ctr images ls")
    if ref not in listed.split():
        # containerd's store outlives the cluster, so each build is exported and imported once.
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE_DIR, prefix="export-") as tmp:
            archive = Path(tmp) / "image.tar"
            _run(["buildah", "push", "--quiet", ref, f"oci-archive:{archive}:{ref}"], f"export {ref}")
            _run(
                [*ctr_ns, "images", "import", "--base-name", repository, "--digests", str(archive)],
                f"import {ref} into containerd",
            )
    # Without this the store grows by a server image (~1.9 GB unpacked) with every source
    # change, and a long-lived machine runs out of disk in the middle of a build.
    kept = {name for image in _buildah_images() for name in image.get("names") or []}
    stale = stale_references(_ctr_images(ctr_ns), repository, kept | {ref})
    if stale:
        # --sync: the layers and unpacked snapshots are gone when this returns, not later.
        subprocess.run([*ctr_ns, "images", "rm", "--sync", *stale], capture_output=True, check=False)


def stale_references(listed: Iterable[tuple[str, str]], repository: str, kept: set[str]) -> list[str]:
    """The references in containerd (`(reference, manifest digest)` pairs) to remove: those of
    `repository`, by tag or by digest, that belong to none of the `kept` tags, and the image-ID
    references (`sha256:...`, which the kubelet's CRI adds) no named reference shares a digest with.
    """
    listed = list(listed)
    prefixes = (repository + ":", repository + "@")
    mine = [(name, digest) for name, digest in listed if name.startswith(prefixes)]
    kept_digests = {digest for name, digest in mine if name in kept}
    stale = {name for name, digest in mine if name not in kept and digest not in kept_digests}
    named = {digest for name, digest in listed if not name.startswith("sha256:") and name not in stale}
    orphans = {name for name, digest in listed if name.startswith("sha256:") and digest not in named}
    return sorted(stale | orphans)


def _buildah_images() -> list[dict[str, Any]]:
    return list(json.loads(_run(["buildah", "images", "--json"], "buildah images") or "[]"))


def _ctr_images(ctr_ns: Sequence[str]) -> list[tuple[str, str]]:
    """`(reference, manifest digest)` of every image; `ctr images ls` prints REF TYPE DIGEST ..."""
    rows = _run([*ctr_ns, "images", "ls"], "ctr images ls").splitlines()[1:]
    return [(cols[0], cols[2]) for cols in (row.split() for row in rows) if len(cols) >= 3]


def _record(log: Path, what: str, ref: str, seconds: float) -> None:
    size = _run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref], "inspect"
    ).strip()
    with log.open("a") as out:
        out.write(f"== built {what} as {ref} ({size[:12]}) in {seconds:.0f} s\n")


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster.images", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["build", "base"])
    parser.add_argument(
        "--models", type=Path, help="model repository for the server image (MODEL_SOURCE=copy)"
    )
    parser.add_argument("--log", type=Path, default=CACHE_DIR / "build.log")
    args = parser.parse_args(argv)
    try:
        if args.command == "base":
            check_tools()
            print(build_base(args.log))
            return 0
        images = build_all(args.log, models=args.models)
    except ClusterError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"base={images.base}\nserver={images.server}\noperator={images.operator}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
