"""The packages to carry to the GPU machine as wheels (ci/device_prepare.sh).

    python ci/wheel_closure.py IMAGE_LIST ROOT [ROOT ...]
        prints name==version for every installed distribution that ROOTs need (their whole
        dependency closure, extras off), less those named in IMAGE_LIST (one name a line, '#'
        comments), the packages the GPU image already has
    python ci/wheel_closure.py --in-image IMAGE_LIST ROOT [ROOT ...]
        the others: the closure's packages that the image has (the rehearsal installs them)
    python ci/wheel_closure.py --prune DIR [DIR ...] -- name==version ...
        deletes the wheels in DIRs that are not of the listed versions (an older run's)
    python ci/wheel_closure.py --link-image IMAGE_LIST DEST
        links into DEST (a folder for a .pth file) the top-level files of every installed
        distribution that the image has, with their whole closure: the rehearsal's stand-in for
        the image's site-packages, at no disk cost (a second torch is gigabytes)

Run it with the interpreter whose versions are to be carried: the closure is read from its
installed metadata, so the carried versions are those the test suite passes with.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement


def normalise(name: str) -> str:
    """PEP 503's form of a distribution name (`Jinja2`, `jinja_2` -> `jinja2`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    """normalised name -> installed version of the roots and everything they need."""
    found: dict[str, str] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if normalise(name) in found:
            continue
        dist = metadata.distribution(name)  # PackageNotFoundError: the root is not installed
        found[normalise(name)] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                pending.append(req.name)
    return found


def image_packages(path: str) -> set[str]:
    lines = Path(path).read_text().splitlines()
    return {normalise(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def prune(dirs: list[str], wanted: list[str]) -> None:
    keep = {(normalise(s.split("==")[0]), s.split("==")[1]) for s in wanted}
    for folder in dirs:
        for wheel in Path(folder).glob("*.whl"):
            name, version = wheel.name.split("-")[:2]
            if (normalise(name), version) not in keep:
                wheel.unlink()
                print(f"removed stale {wheel}")


def installed_image_closure(image: set[str]) -> set[str]:
    """The normalised names of the installed distributions in IMAGE, and all they need."""
    installed = {normalise(d.metadata["Name"]) for d in metadata.distributions()}
    return set(closure(sorted(image & installed)))


def link_image(image_list: str, dest: str) -> None:
    """Symlinks each top-level entry (package folder, module, .dist-info) of the image's
    installed distributions into DEST. Folders that several distributions share (`nvidia/`) are
    linked once; .pth files and console scripts are left out."""
    wanted = installed_image_closure(image_packages(image_list))
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    for dist in metadata.distributions():
        if normalise(dist.metadata["Name"]) not in wanted:
            continue
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops):
            source = Path(str(dist.locate_file(top)))
            link = target / top
            if top in ("..", "", "__pycache__") or top.endswith(".pth") or not source.exists():
                continue
            if not link.is_symlink():
                link.symlink_to(source.resolve())


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--link-image" and len(argv) == 3:
        link_image(argv[1], argv[2])
        return 0
    if argv and argv[0] == "--prune":
        split = argv.index("--")
        prune(argv[1:split], argv[split + 1:])
        return 0
    in_image = bool(argv) and argv[0] == "--in-image"
    argv = argv[1:] if in_image else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    image = image_packages(argv[0])
    for name, version in sorted(closure(argv[1:]).items()):
        if (name in image) == in_image:
            print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
