"""The GPU window's kit (ci/device_prepare.sh, ci/gpu_run.sh): what can be checked on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "ci"))
import wheel_closure  # noqa: E402


def test_closure_holds_snakemake_needs_and_leaves_out_the_image(tmp_path):
    image = tmp_path / "image.txt"
    image.write_text("# the image\nPyYAML\nJinja2\n")
    found = wheel_closure.closure(["snakemake", "jsonschema"])
    assert {"snakemake", "jsonschema", "referencing", "pyyaml", "jinja2"} <= found.keys()
    out = subprocess.run([sys.executable, str(REPO / "ci/wheel_closure.py"), str(image),
                          "snakemake", "jsonschema"], capture_output=True, text=True, check=True)
    carried = {line.split("==")[0] for line in out.stdout.split()}
    assert "snakemake" in carried and "referencing" in carried
    assert "pyyaml" not in carried and "jinja2" not in carried


def test_prune_keeps_only_the_wanted_versions(tmp_path):
    for name in ("snakemake-9.1.0-py3-none-any.whl", "snakemake-9.2.0-py3-none-any.whl",
                 "rpds_py-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"):
        (tmp_path / name).write_bytes(b"")
    wheel_closure.prune([str(tmp_path)], ["snakemake==9.2.0", "rpds-py==1.0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "rpds_py-1.0-cp312-cp312-manylinux_2_17_x86_64.whl", "snakemake-9.2.0-py3-none-any.whl"]


def test_link_image_links_the_image_closure_and_nothing_else(tmp_path):
    """The rehearsal's stand-in for the image's site-packages: symlinks, no copies (a CI machine
    has no disk for a second torch), and never snakemake or jsonschema."""
    image = tmp_path / "image.txt"
    image.write_text("PyYAML\nJinja2\n")
    wheel_closure.link_image(str(image), str(tmp_path / "site"))
    linked = {p.name: p for p in (tmp_path / "site").iterdir()}
    assert {"yaml", "jinja2", "markupsafe"} <= linked.keys()  # markupsafe: Jinja2's need
    assert all(p.is_symlink() for p in linked.values())
    assert not any(n.startswith(("snakemake", "jsonschema", "torch")) for n in linked)


@pytest.mark.slow
def test_gpu_run_rehearsal_passes_and_returns_at_most_8_files(tmp_path):
    """`make rehearse-gpu`: gpu_run.sh in a fresh venv without snakemake and jsonschema, from the
    carried wheels, no CUDA, 60 s; at most 8 files come back, no stage fails on its arguments."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(["bash", "ci/rehearse_gpu.sh", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 3 <= len(files) <= 8
    summary = (out / "summary.txt").read_text()
    table = summary.split("== table\n")[1]
    assert "preamble         ok: python" in table
    # every stage ran; a stage may be cut by the short deadline (124), never refuse its arguments
    for stage in ("1 CUDA tests", "2 bench", "3 bench --fused", "3 fuse choice", "4 campaign"):
        assert stage in table
    assert "exit 2" not in table and "exit 1:" not in table.split("4 campaign")[0]
