"""A model version as one published file: a gzip-compressed tar of its directory, and back.

What is published is ``<version dir>`` packed with its files at the top of the archive
(``saved_model.pb``, ``variables/...``, ``model.onnx``, ``metadata.json``), members sorted, owners,
modes and times normalised and the gzip header's time zeroed: the same version always packs to
the same bytes, so its SHA-256 names it. The digest a MnistModel pins is that of this file.

Unpacking trusts nothing in the archive: only regular files and directories, no absolute names,
no ``..``, no links of any kind (a link could point out of the target, or a later member could
write through it), fresh permissions, and bounds on the bytes and the number of members, checked
before each member is written (a small archive can inflate to a huge one).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from mnist_server.repository import is_complete

MAX_MEMBERS = 10_000
SAVED_MODEL = "saved_model.pb"
_CHUNK = 1 << 20


class ArchiveError(Exception):
    """The archive is not a model version this server can serve; the message says why."""


@dataclass(frozen=True)
class Packed:
    path: Path
    sha256: str
    size: int


def pack(version_dir: Path, destination: Path) -> Packed:
    """Write ``version_dir`` to ``destination`` as a reproducible tar.gz; its digest and size."""
    if not is_complete(version_dir):
        raise ArchiveError(f"{version_dir}: not a complete model version (no saved_model.pb)")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    with (
        partial.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in _walk(version_dir):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(version_dir).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isfile():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
    digest, size = file_sha256(partial)
    partial.replace(destination)
    return Packed(destination, digest, size)


def _walk(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ArchiveError(f"{path}: only regular files and directories can be published")
        yield path


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def unpack(archive: Path, target: Path, *, max_bytes: int, max_members: int = MAX_MEMBERS) -> int:
    """Extract ``archive`` into the new directory ``target``; the bytes written. Raises
    ArchiveError (and leaves no ``target``) for anything unsafe, unreadable or not a model."""
    target.mkdir(mode=0o755)
    try:
        written = _extract(archive, target, max_bytes=max_bytes, max_members=max_members)
        if not (target / SAVED_MODEL).is_file():  # is_complete() would refuse the hidden staging name
            top = sorted(p.name for p in target.iterdir())[:5]
            raise ArchiveError(
                "the archive is not a model version: no saved_model.pb at its top level (it holds "
                + (", ".join(top) or "nothing")
                + "; publish a version directory's contents, e.g. with mnist-train publish)"
            )
        return written
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _extract(archive: Path, target: Path, *, max_bytes: int, max_members: int) -> int:
    written = 0
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise ArchiveError(f"the archive holds more than {max_members} members")
                name = _safe_name(member)
                if name is None:
                    continue
                dest = target.joinpath(*name.parts)
                if member.isdir():
                    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                written += member.size
                if written > max_bytes:
                    raise ArchiveError(f"the archive unpacks to more than {max_bytes} bytes")
                dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                _write_new(dest, source, member.size)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ArchiveError(f"not a readable tar.gz archive (truncated or another format): {exc}") from None
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise ArchiveError(f"the archive holds the same path twice: {exc.filename}") from None
    return written


def _safe_name(member: tarfile.TarInfo) -> PurePosixPath | None:
    """The member's path inside the target, or None for the archive's own root (``.``)."""
    if member.issym() or member.islnk():
        raise ArchiveError(f"the archive holds a link, {member.name!r}: links are refused")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"the archive holds {member.name!r}, which is neither a file nor a directory")
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\\" in member.name:
        raise ArchiveError(f"the archive holds {member.name!r}, a path outside its directory")
    parts = [p for p in path.parts if p != "."]
    return PurePosixPath(*parts) if parts else None


def _write_new(dest: Path, source: IO[bytes], size: int) -> None:
    # O_EXCL and O_NOFOLLOW: never through something already there (a second member of the
    # same name, or anything planted), and never following a link.
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    remaining = size
    with os.fdopen(fd, "wb") as out:
        while remaining > 0:
            chunk = source.read(min(_CHUNK, remaining))
            if not chunk:
                raise ArchiveError(f"the archive ends inside {dest.name} (truncated)")
            out.write(chunk)
            remaining -= len(chunk)
