"""Unpacking a dataset given as a tar archive (plain, gzip, bzip2 or xz) into a folder.

Only regular files and folders are unpacked. Every link (symbolic or hard), device and fifo is
refused, as is a member whose name is absolute or contains ``..``: a link could point anywhere
(``/etc/passwd``, ``../../secret.png``) and would be read when the data is prepared, and an image
folder never needs one. Refusing them all is simpler to get right than judging where each points.

The archive is unpacked into a temporary folder beside the destination and renamed into place
once complete, so an interrupted or refused extraction never leaves a folder that looks whole.

The members' declared sizes are added up before each is written, and unpacking stops at
``max_bytes`` (the dataset's ``max_cached_bytes``: an archive is unpacked only to be cached, and
its files hold at least roughly the pixels it would cache) and removes what it unpacked: a small
archive of huge content (an archive bomb) never fills the disk. tarfile writes exactly the
declared size of a member, so the sum is what reaches the disk.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from dgkd_core.data.prepared import DataError
from dgkd_core.data.sources import DEFAULT_MAX_CACHED_BYTES

__all__ = ["MAX_MEMBER_DEPTH", "extract_archive"]

# An image folder is two or three levels deep; a thousand would exhaust Python's recursion.
MAX_MEMBER_DEPTH = 64

# Python >= 3.11.4 has extraction filters; "data" also drops setuid bits and owners. Our own member
# check below runs first either way, so an older 3.11 is still safe.
_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike,
                    max_bytes: int | None = None) -> int:
    """Unpack the tar file ``archive`` into the folder ``dest`` (created; must not hold files).

    Raises DataError (one line, naming the archive and, where one is at fault, the member) for an
    unreadable archive, a link/device/fifo member, a member with an absolute path or ``..``, or
    members that add up to more than ``max_bytes`` (default: ``DEFAULT_MAX_CACHED_BYTES``); then
    ``dest`` is left absent and nothing unpacked is kept. Returns the number of regular files
    unpacked.
    """
    archive, dest = Path(archive), Path(dest)
    max_bytes = DEFAULT_MAX_CACHED_BYTES if max_bytes is None else int(max_bytes)
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()  # an empty folder (e.g. made by the caller) is replaced
    elif dest.exists():
        raise DataError(f"cannot unpack {archive} into {dest}: it already exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        n_files = _unpack_members(archive, partial, max_bytes)
        os.rename(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return n_files


def _unpack_members(archive: Path, into: Path, max_bytes: int) -> int:
    """Check and unpack each member in one pass (a compressed archive is read once)."""
    n_files = unpacked = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(member, archive)
                unpacked += member.size if member.isfile() else 0
                if unpacked > max_bytes:
                    raise DataError(
                        f"archive {archive} unpacks to more than {max_bytes} bytes (member "
                        f"{member.name[:80]!r} takes it to {unpacked}); nothing is kept: unpack "
                        "it yourself and set the dataset's root, or raise its "
                        "options.max_cached_bytes")
                # no modes, owners or times from the archive: a read-only folder would stop the
                # files after it from being written, and the data needs none of them
                tar.extract(member, into, set_attrs=False, **_FILTER)
                n_files += member.isfile()
    except (tarfile.TarError, EOFError, OSError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__  # one line
        raise DataError(f"cannot unpack archive {archive}: {detail}") from err
    return n_files


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Raise DataError unless ``member`` is a regular file or folder with a relative name."""
    name = repr(member.name)  # repr keeps a name with odd characters on one line
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        raise DataError(f"archive {archive}: member {name} is a {kind} (to {member.linkname!r}); "
                        f"links are refused: pack the image files themselves")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"archive {archive}: member {name} is a device or fifo, not a file or "
                        f"folder; refused")
    path = PurePosixPath(member.name)
    if len(path.parts) > MAX_MEMBER_DEPTH:  # os.makedirs recurses once per folder
        raise DataError(f"archive {archive}: member {name[:80]}... nests {len(path.parts)} "
                        f"folders deep, more than {MAX_MEMBER_DEPTH}; refused")
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"archive {archive}: member {name} has an absolute path or '..' (it "
                        f"would be written outside the dataset folder); refused")
