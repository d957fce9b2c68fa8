"""The cluster admin's policy as a pure function: what each setting refuses, and what it lets by."""

from __future__ import annotations

from typing import Any

import pytest

from mnist_operator import api
from mnist_operator.policy import (
    CombinedClaims,
    HostClaim,
    Part,
    Verdict,
    evaluate,
    host_claims,
    image_matches,
    image_repository,
    parse_annotation_prefix,
    parse_host_suffix,
    parse_list,
    parse_service_account,
    parse_toleration_rule,
)
from mnist_operator.settings import OperatorSettings
from mnist_operator.spec import parse_spec

DEFAULTS = OperatorSettings(default_image="registry.example.com/ml/mnist-server:1.0")
PLAIN = api.Capabilities()
OPENSHIFT = api.Capabilities(routes=True, service_monitors=True)


def judge(
    spec: dict[str, Any],
    settings: OperatorSettings = DEFAULTS,
    *,
    caps: api.Capabilities = PLAIN,
    namespace: str = "team-a",
    claims: dict[str, list[HostClaim]] | None = None,
) -> Verdict:
    return evaluate(parse_spec({"modelVersion": "1", **spec}), namespace, settings, caps, claims or {})


def refused(verdict: Verdict) -> list[tuple[Part, str, str]]:
    return [(r.part, r.field, r.rule) for r in verdict.refusals]


def exposed(**exposure: Any) -> dict[str, Any]:
    return {"exposure": {"enabled": True, **exposure}}


def test_a_plain_model_and_the_samples_pass_the_default_policy() -> None:
    assert judge({}).refusals == ()
    # What manifests/samples ask for: a host, a cert-manager annotation, a 15 s scrape.
    assert (
        judge(
            exposed(host="mnist.apps.example.com", annotations={"cert-manager.io/cluster-issuer": "le"})
        ).refusals
        == ()
    )
    assert judge({"monitoring": {"serviceMonitor": {"enabled": True, "interval": "15s"}}}).refusals == ()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # Images: any tag or digest of the shared image's repository, nothing else by default.
        ({"image": "registry.example.com/ml/mnist-server:2.0"}, []),
        ({"image": "registry.example.com/ml/mnist-server@sha256:" + "a" * 64}, []),
        (
            {"image": "registry.example.com/ml/mnist-server-evil:1"},
            [(Part.WORKLOAD, "spec.image", "MNIST_OPERATOR_ALLOWED_IMAGES")],
        ),
        (
            {"image": "docker.io/attacker/miner:latest"},
            [(Part.WORKLOAD, "spec.image", "MNIST_OPERATOR_ALLOWED_IMAGES")],
        ),
        # ServiceAccounts: the namespace's default only.
        ({"serviceAccountName": "default"}, []),
        (
            {"serviceAccountName": "cloud-admin"},
            [(Part.WORKLOAD, "spec.serviceAccountName", "MNIST_OPERATOR_ALLOWED_SERVICE_ACCOUNTS")],
        ),
        # Tolerations: none.
        (
            {
                "tolerations": [
                    {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
                ]
            },
            [(Part.WORKLOAD, "spec.tolerations[0]", "MNIST_OPERATOR_ALLOWED_TOLERATIONS")],
        ),
        # Annotations on the shared ingress: cert-manager's only.
        (
            exposed(host="a.example.com", annotations={"nginx.ingress.kubernetes.io/server-snippet": "x"}),
            [(Part.EXPOSURE, "spec.exposure.annotations", "MNIST_OPERATOR_ALLOWED_ANNOTATION_PREFIXES")],
        ),
        # An Ingress without a host is a catch-all: refused.
        (exposed(), [(Part.EXPOSURE, "spec.exposure.host", "MNIST_OPERATOR_REQUIRE_INGRESS_HOST")]),
        # Scraping more often than every 10 s: refused.
        (
            {"monitoring": {"serviceMonitor": {"enabled": True, "interval": "500ms"}}},
            [
                (
                    Part.MONITORING,
                    "spec.monitoring.serviceMonitor.interval",
                    "MNIST_OPERATOR_MIN_SCRAPE_INTERVAL_SECONDS",
                )
            ],
        ),
        # Nothing is judged of what is switched off.
        ({"exposure": {"enabled": False, "annotations": {"evil/x": "1"}}}, []),
        ({"monitoring": {"serviceMonitor": {"enabled": False, "interval": "1s"}}}, []),
    ],
)
def test_the_default_policy(spec: dict[str, Any], expected: list[tuple[Part, str, str]]) -> None:
    assert refused(judge(spec)) == expected


def test_a_route_without_a_host_is_fine_openshift_generates_a_unique_one() -> None:
    assert judge(exposed(), caps=OPENSHIFT).refusals == ()
    relaxed = OperatorSettings(require_ingress_host=False)
    assert judge(exposed(), relaxed).refusals == ()


def test_an_http_route_without_a_host_is_fine_the_gateway_listener_decides() -> None:
    assert judge(exposed(gateway={"name": "public"})).refusals == ()
    # The allowed domains still apply to a host it names.
    assert (
        judge(exposed(host="a.example.com", gateway={"name": "public"})).refusals
        == judge(exposed(host="a.example.com")).refusals
    )


def test_every_refusal_is_reported_with_its_rule() -> None:
    verdict = judge(
        {
            "image": "evil:1",
            "serviceAccountName": "admin",
            **exposed(host="a.example.com", annotations={"b/x": "1", "a/y": "2"}),
            "monitoring": {"serviceMonitor": {"enabled": True, "interval": "1s"}},
        }
    )
    assert [r.part for r in verdict.refusals] == [
        Part.WORKLOAD,
        Part.WORKLOAD,
        Part.EXPOSURE,
        Part.MONITORING,
    ]
    assert verdict.describe(Part.EXPOSURE) == (
        "the operator's policy refuses spec.exposure.annotations: a/y, b/x may not be set on a shared "
        "Route or Ingress (allowed prefixes: cert-manager.io/) (MNIST_OPERATOR_ALLOWED_ANNOTATION_PREFIXES)"
    )
    assert (
        "spec.image: image 'evil:1' is not allowed here (allowed: registry.example.com/ml/mnist-server)"
        in (verdict.describe(Part.WORKLOAD))
    )
    assert verdict.describe(Part.MONITORING).endswith(
        "scraping every 1s is more often than allowed here (the shortest interval is 10s) "
        "(MNIST_OPERATOR_MIN_SCRAPE_INTERVAL_SECONDS)"
    )


def test_the_effective_spec_drops_only_what_was_refused() -> None:
    spec = parse_spec(
        {
            "modelVersion": "1",
            "exposure": {"enabled": True, "host": "a.example.com"},
            "monitoring": {"serviceMonitor": {"enabled": True, "interval": "1s"}},
        }
    )
    verdict = evaluate(spec, "team-a", DEFAULTS, PLAIN, {})
    effective = verdict.effective(spec)
    assert effective.exposure.enabled is True  # allowed
    assert effective.service_monitor.enabled is False  # refused
    assert Verdict().effective(spec) == spec


def test_an_admin_can_allow_more() -> None:
    settings = OperatorSettings(
        default_image="registry.example.com/ml/mnist-server:1.0",
        allowed_images=("registry.example.com/team-images/", "quay.io/acme/mnist"),
        allowed_service_accounts=("mnist-reader",),
        allowed_tolerations=("dedicated=ml:NoSchedule", "spot"),
        allowed_annotation_prefixes=("cert-manager.io/", "nginx.ingress.kubernetes.io/proxy-body-size"),
    )
    ok = {
        "image": "registry.example.com/team-images/digits/server:7",
        "serviceAccountName": "mnist-reader",
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
            {"key": "spot", "operator": "Exists"},  # any value, any effect
        ],
        **exposed(host="a.example.com", annotations={"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}),
    }
    assert judge(ok, settings).refusals == ()
    assert judge({"image": "quay.io/acme/mnist:3"}, settings).refusals == ()
    # The rule's value and effect bind: another value, every effect, or every taint is refused.
    for toleration in (
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml"},
        {"operator": "Exists"},
    ):
        assert refused(judge({"tolerations": [toleration]}, settings)) == [
            (Part.WORKLOAD, "spec.tolerations[0]", "MNIST_OPERATOR_ALLOWED_TOLERATIONS")
        ], toleration
    anything = OperatorSettings(
        allowed_images=("*",),
        allowed_service_accounts=("*",),
        allowed_tolerations=("*",),
        allowed_annotation_prefixes=("*",),
    )
    assert (
        judge({**ok, "image": "anything:1", "tolerations": [{"operator": "Exists"}]}, anything).refusals == ()
    )


@pytest.mark.parametrize(
    ("image", "entry", "allowed"),
    [
        ("reg.io/ml/server:1", "reg.io/ml/", True),
        ("reg.io/ml/deeper/server:1", "reg.io/ml/", True),
        ("reg.io/ml-evil/server:1", "reg.io/ml/", False),
        ("reg.io/ml/server", "reg.io/ml/server", True),
        ("reg.io/ml/server:2", "reg.io/ml/server", True),
        ("reg.io/ml/server@sha256:abc", "reg.io/ml/server", True),
        ("reg.io/ml/server-evil:2", "reg.io/ml/server", False),
        ("reg.io/ml/server:2", "reg.io/ml/server:1", False),
        ("localhost:5000/anything", "localhost", False),  # a tag never holds a path
        ("mnist-server:1", "docker.io/library/mnist-server", False),  # textual, on purpose
    ],
)
def test_image_entries(image: str, entry: str, allowed: bool) -> None:
    assert image_matches(image, entry) is allowed


def test_image_repository() -> None:
    assert image_repository("localhost:5000/ml/mnist-server:1.0") == "localhost:5000/ml/mnist-server"
    assert image_repository("mnist-server@sha256:abc") == "mnist-server"
    assert image_repository("localhost:5000/mnist-server") == "localhost:5000/mnist-server"


def test_hosts_must_be_in_the_namespaces_domains() -> None:
    settings = OperatorSettings(allowed_host_suffixes=("{namespace}.apps.example.com", "shared.example.com"))
    assert judge(exposed(host="digits.team-a.apps.example.com"), settings).refusals == ()
    assert judge(exposed(host="team-a.apps.example.com"), settings).refusals == ()
    assert judge(exposed(host="x.shared.example.com"), settings).refusals == ()
    for host in ("digits.team-b.apps.example.com", "evilteam-a.apps.example.com", "example.com"):
        verdict = judge(exposed(host=host), settings)
        assert refused(verdict) == [
            (Part.EXPOSURE, "spec.exposure.host", "MNIST_OPERATOR_ALLOWED_HOST_SUFFIXES")
        ]
        assert "team-a.apps.example.com, shared.example.com" in verdict.describe()


def test_a_host_another_namespace_holds_is_refused_and_the_oldest_claim_wins() -> None:
    old = HostClaim("2026-01-01T00:00:00Z", "team-b", "digits")
    new = HostClaim("2026-02-01T00:00:00Z", "team-a", "digits")
    taken = judge(exposed(host="a.example.com"), claims={"a.example.com": [old]})
    assert refused(taken) == [
        (Part.EXPOSURE, "spec.exposure.host", "hosts are never shared between namespaces")
    ]
    assert taken.taken_host == "a.example.com"
    assert "team-b" not in taken.describe()  # which namespaces exist is not the user's business
    # Both made an Ingress at once (neither saw the other yet): the newer one gives way...
    assert (
        judge(exposed(host="a.example.com"), claims={"a.example.com": [new, old]}).taken_host
        == "a.example.com"
    )
    # ...and the older one keeps it.
    assert (
        judge(
            exposed(host="a.example.com"), namespace="team-b", claims={"a.example.com": [new, old]}
        ).refusals
        == ()
    )
    # Our own namespace's claims, and other hosts, are no conflict.
    mine = HostClaim("2026-01-01T00:00:00Z", "team-a", "other")
    assert judge(exposed(host="a.example.com"), claims={"a.example.com": [mine]}).refusals == ()
    assert judge(exposed(host="b.example.com"), claims={"a.example.com": [old]}).refusals == ()


def test_host_claims_come_from_our_routes_and_ingresses() -> None:
    owner = [
        {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": "digits", "uid": "u", "controller": True}
    ]
    meta = {"namespace": "team-a", "creationTimestamp": "2026-01-01T00:00:00Z", "ownerReferences": owner}
    claim = HostClaim("2026-01-01T00:00:00Z", "team-a", "digits")
    ingress = {
        "kind": "Ingress",
        "metadata": meta,
        "spec": {"rules": [{"host": "a.example.com"}, {"http": {}}]},
    }
    route = {"kind": "Route", "metadata": meta, "spec": {"host": "b.example.com"}}
    assert host_claims(ingress) == {"a.example.com": claim}
    assert host_claims(route) == {"b.example.com": claim}
    assert host_claims({"kind": "Route", "metadata": meta, "spec": {}}) == {}
    assert host_claims({**ingress, "metadata": {"namespace": "team-a"}}) == {}  # not ours

    combined = CombinedClaims(
        {"a.example.com": [claim]}, {"a.example.com": [claim], "b.example.com": [claim]}
    )
    assert list(combined["a.example.com"]) == [claim, claim]
    assert sorted(combined) == ["a.example.com", "b.example.com"] and len(combined) == 2
    assert combined.get("c.example.com") is None


def test_list_settings() -> None:
    assert parse_list(" a/, b/ ,,", parse_annotation_prefix) == ("a/", "b/")
    assert parse_list("none", parse_annotation_prefix) == ()
    assert parse_list("*", parse_annotation_prefix) == ("*",)
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_list("*, a/", parse_annotation_prefix)
    assert parse_host_suffix("*.Apps.Example.com") == "apps.example.com"
    assert parse_host_suffix(".{namespace}.apps.example.com") == "{namespace}.apps.example.com"
    for bad in ("{team}.example.com", "https://example.com", "exa mple.com"):
        with pytest.raises(ValueError):
            parse_host_suffix(bad)
    assert parse_toleration_rule("dedicated=ml:NoSchedule").effect == "NoSchedule"
    assert parse_toleration_rule("example.com/spot").value is None
    for bad in ("dedicated:Sometimes", "=ml", "bad key"):
        with pytest.raises(ValueError):
            parse_toleration_rule(bad)
    with pytest.raises(ValueError):
        parse_service_account("Admin")
