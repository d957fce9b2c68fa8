"""hack/localcluster/images.py: which of containerd's references the node's store can drop."""

from __future__ import annotations

from localcluster.images import stale_references

SERVER = "localhost/mnist-server"


def _listing() -> list[tuple[str, str]]:
    """What `ctr images ls` shows after three server builds were imported (by tag and by digest,
    as `import --digests` names them), the kubelet ran two of them (its CRI adds image-ID
    references), and the pause image and another repository are there too."""
    return [
        (f"{SERVER}:dev-old", "sha256:m-old"),
        (f"{SERVER}@sha256:m-old", "sha256:m-old"),
        ("sha256:config-old", "sha256:m-old"),
        (f"{SERVER}:dev-mid", "sha256:m-mid"),
        (f"{SERVER}@sha256:m-mid", "sha256:m-mid"),
        (f"{SERVER}:dev-new", "sha256:m-new"),
        (f"{SERVER}@sha256:m-new", "sha256:m-new"),
        ("sha256:config-new", "sha256:m-new"),
        ("localhost/mnist-pause:p1", "sha256:m-pause"),
        ("sha256:config-pause", "sha256:m-pause"),
        ("localhost/mnist-operator:dev-1", "sha256:m-op"),
    ]


def test_builds_buildah_no_longer_keeps_go_with_their_digest_and_image_id_references() -> None:
    kept = {f"{SERVER}:dev-mid", f"{SERVER}:dev-new", "localhost/mnist-operator:dev-1"}
    assert stale_references(_listing(), SERVER, kept) == [
        f"{SERVER}:dev-old",
        f"{SERVER}@sha256:m-old",
        "sha256:config-old",
    ]


def test_other_repositories_and_their_image_ids_are_left_alone() -> None:
    stale = stale_references(_listing(), SERVER, {f"{SERVER}:dev-new"})
    assert not any(name.startswith(("localhost/mnist-pause", "localhost/mnist-operator")) for name in stale)
    assert "sha256:config-pause" not in stale
    assert "sha256:config-new" not in stale


def test_a_build_also_tagged_otherwise_keeps_its_layers() -> None:
    # Two tags on one manifest: dropping the stale tag must not drop the digest reference the
    # kept tag shares.
    listed = [*_listing(), (f"{SERVER}:dev-alias", "sha256:m-new")]
    stale = stale_references(listed, SERVER, {f"{SERVER}:dev-alias"})
    assert f"{SERVER}@sha256:m-new" not in stale
    assert "sha256:config-new" not in stale
    assert f"{SERVER}:dev-old" in stale and f"{SERVER}:dev-mid" in stale


def test_nothing_is_stale_when_every_build_is_kept() -> None:
    kept = {f"{SERVER}:dev-old", f"{SERVER}:dev-mid", f"{SERVER}:dev-new"}
    assert stale_references(_listing(), SERVER, kept) == []
