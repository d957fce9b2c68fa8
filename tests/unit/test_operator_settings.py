"""Operator settings from MNIST_OPERATOR_* variables: defaults, parsing and clear errors, and
the one table (VARIABLES) that --help and docs/operator.md follow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mnist_operator import main
from mnist_operator.settings import VARIABLES, OperatorSettings, SettingsError, format_default

DOC = (Path(__file__).parents[2] / "docs" / "operator.md").read_text()


def test_defaults_without_environment() -> None:
    settings = OperatorSettings.from_env({})
    assert settings == OperatorSettings()
    assert settings.namespaces == ()  # cluster-wide
    assert (settings.health_port, settings.metrics_port) == (8081, 8080)


def test_every_variable_is_read() -> None:
    settings = OperatorSettings.from_env(
        {
            "MNIST_OPERATOR_IMAGE": "registry.local/mnist-server:7",
            "MNIST_OPERATOR_DRAIN_SECONDS": "0",
            "MNIST_OPERATOR_NAMESPACES": " team-a, team-b ,,",
            "MNIST_OPERATOR_LOG_FORMAT": "JSON",
            "MNIST_OPERATOR_LOG_LEVEL": "debug",
            "MNIST_OPERATOR_BIND_ADDRESS": "127.0.0.1",
            "MNIST_OPERATOR_HEALTH_PORT": "9001",
            "MNIST_OPERATOR_METRICS_PORT": "9002",
            "MNIST_OPERATOR_WORKERS": "2",
            "MNIST_OPERATOR_RESYNC_SECONDS": "30.5",
            "MNIST_OPERATOR_DISCOVERY_TTL_SECONDS": "0",
            "MNIST_OPERATOR_QUEUE_STALL_SECONDS": "120",
            "MNIST_OPERATOR_LEADER_ELECTION": "false",
            "MNIST_OPERATOR_LEADER_ELECTION_NAMESPACE": "ops",
            "MNIST_OPERATOR_LEASE_DURATION_SECONDS": "30",
            "MNIST_OPERATOR_RENEW_DEADLINE_SECONDS": "20",
            "MNIST_OPERATOR_RETRY_PERIOD_SECONDS": "4",
            "MNIST_OPERATOR_ALLOWED_ANNOTATION_PREFIXES": "none",
            "MNIST_OPERATOR_REQUIRE_INGRESS_HOST": "False",
            "MNIST_OPERATOR_ALLOWED_HOST_SUFFIXES": "*.{namespace}.apps.example.com, example.org",
            "MNIST_OPERATOR_ALLOWED_IMAGES": "registry.local/, quay.io/acme/mnist",
            "MNIST_OPERATOR_ALLOWED_SERVICE_ACCOUNTS": "*",
            "MNIST_OPERATOR_ALLOWED_TOLERATIONS": "dedicated=ml:NoSchedule,spot",
            "MNIST_OPERATOR_MIN_SCRAPE_INTERVAL_SECONDS": "30",
            "UNRELATED": "x",
        }
    )
    assert settings == OperatorSettings(
        default_image="registry.local/mnist-server:7",
        drain_seconds=0,
        namespaces=("team-a", "team-b"),
        log_format="json",
        log_level="debug",
        bind_address="127.0.0.1",
        health_port=9001,
        metrics_port=9002,
        workers=2,
        resync_seconds=30.5,
        discovery_ttl_seconds=0,
        queue_stall_seconds=120,
        leader_election=False,
        leader_election_namespace="ops",
        lease_duration_seconds=30,
        renew_deadline_seconds=20,
        retry_period_seconds=4,
        allowed_annotation_prefixes=(),
        require_ingress_host=False,
        allowed_host_suffixes=("{namespace}.apps.example.com", "example.org"),
        allowed_images=("registry.local/", "quay.io/acme/mnist"),
        allowed_service_accounts=("*",),
        allowed_tolerations=("dedicated=ml:NoSchedule", "spot"),
        min_scrape_interval_seconds=30,
    )


def test_blank_values_mean_default() -> None:
    assert (
        OperatorSettings.from_env({"MNIST_OPERATOR_IMAGE": "  ", "MNIST_OPERATOR_WORKERS": ""})
        == OperatorSettings()
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("LOG_FORMAT", "xml", "plain or json"),
        ("LOG_LEVEL", "loud", "debug, info"),
        ("HEALTH_PORT", "http", "expected an integer"),
        ("METRICS_PORT", "70000", "not a TCP port"),
        ("WORKERS", "0", "at least 1"),
        ("DRAIN_SECONDS", "-1", "at least 0"),
        ("RESYNC_SECONDS", "soon", "expected a number"),
        ("QUEUE_STALL_SECONDS", "0", "at least 1"),
        ("HEALTH_PORT", "8080", "must differ"),
        ("REQUIRE_INGRESS_HOST", "maybe", "expected true or false"),
        ("ALLOWED_HOST_SUFFIXES", "{team}.example.com", "the only placeholder is {namespace}"),
        ("ALLOWED_TOLERATIONS", "dedicated:Always", "the effect must be one of"),
        ("ALLOWED_IMAGES", "reg.io/*", "not an image"),
        ("ALLOWED_SERVICE_ACCOUNTS", "*,admin", "cannot be combined"),
        ("ALLOWED_ANNOTATION_PREFIXES", "bad prefix", "not an annotation key"),
        ("MIN_SCRAPE_INTERVAL_SECONDS", "often", "expected a number"),
    ],
)
def test_invalid_values_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        OperatorSettings.from_env({f"MNIST_OPERATOR_{name}": value})
    assert f"MNIST_OPERATOR_{name}" in str(caught.value)
    assert expected in str(caught.value)


def test_every_setting_has_one_variable() -> None:
    assert sorted(var.field for var in VARIABLES) == sorted(
        f.name for f in dataclasses.fields(OperatorSettings)
    )
    assert len({var.env_name for var in VARIABLES}) == len(VARIABLES)


def test_help_lists_every_variable_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for var in VARIABLES:
        assert var.env_name in out
        assert f"(default: {format_default(var.default)})" in out, var.env_name


def test_every_variable_is_in_the_docs_table_with_its_default() -> None:
    for var in VARIABLES:
        row = next((line for line in DOC.splitlines() if line.startswith(f"| `{var.env_name}` |")), None)
        assert row is not None, var.env_name
        assert format_default(var.default) in row.split("|")[2], var.env_name


def test_the_operator_names_itself_without_a_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's UID (and OpenShift's arbitrary ones) has no passwd entry: kopf's default
    identity (getpass.getuser()) raised there, and the operator crashed at start-up."""
    import getpass
    import socket

    from mnist_operator.main import operator_identity

    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_user)
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    assert operator_identity().startswith(socket.gethostname() + "@")
