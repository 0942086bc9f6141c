"""The repository's own files: LICENSE, CITATION.cff, and config/README.md kept in step with
config/schema.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DGKD_TITLE = "Densely Guided Knowledge Distillation using Multiple Teacher Assistants"
DGKD_AUTHORS = ["Son", "Na", "Choi", "Hwang"]


def test_license_is_mit_with_the_projects_copyright():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the DGKD pipeline authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


def test_citation_cff_cites_the_paper_and_the_project():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # CFF 1.2.0's required keys
        assert cff[key], key
    assert cff["type"] == "software" and cff["license"] == "MIT"
    assert str(cff["version"]) == "0.1.0"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^version = "0\.1\.0"$', pyproject, re.M)  # the same version
    papers = [cff["preferred-citation"], *cff["references"]]
    for paper in papers:
        assert paper["type"] == "conference-paper" and paper["title"] == DGKD_TITLE
        assert [a["family-names"] for a in paper["authors"]] == DGKD_AUTHORS
        assert paper["year"] == 2021 and "ICCV" in paper["conference"]["name"]
        assert "2009.08825" in paper["url"]


def schema_keys(schema: dict) -> set[str]:
    """Top-level and second-level keys of config/schema.yaml's properties; for a mapping of
    names (datasets, chains) its entries' keys are the second level."""
    keys = set()
    for key, sub in schema["properties"].items():
        keys.add(key)
        nested = sub.get("properties")
        if nested is None and isinstance(sub.get("additionalProperties"), dict):
            nested = sub["additionalProperties"].get("properties")
        keys |= set(nested or {})
    return keys


def test_config_readme_explains_every_schema_key():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    readme = (REPO / "config" / "README.md").read_text()
    keys = schema_keys(schema)
    assert {"datasets", "source", "chains", "tas", "hyperparameters", "per_role", "ablations",
            "num_tas", "keep_prob", "convention", "resources", "runtime_minutes"} <= keys
    # as `key` or under its parent, `ablations.num_tas`
    missing = sorted(k for k in keys if not re.search(rf"`(?:[\w.]+\.)?{k}`", readme))
    assert not missing, f"config/README.md does not explain {missing}"
    for key in schema["properties"]:  # each top-level key has a section
        assert f"## `{key}`" in readme, key


def test_dependencies_are_ranges_and_the_exact_pins_live_in_constraints_txt():
    """pip install into a cluster's environment must keep its torch (issue 24)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    exact = [d for d in project["dependencies"] if "==" in d]
    assert not exact, f"exact pins in [project]: {exact}; they belong in constraints.txt"
    torch = next(d for d in project["dependencies"] if re.match(r"torch\b(?!vision)", d))
    assert "<3" in torch
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert {"torch", "torchvision"} <= pins.keys()
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()
    assert "-c constraints.txt" in (REPO / "environment.yml").read_text()


def test_the_readme_spells_each_command_one_way_and_names_every_make_target():
    """Activated once (said near the top), then the plain commands; every make target told."""
    readme = (REPO / "README.md").read_text()
    assert "source\n.venv/bin/activate" in readme or "source .venv/bin/activate" in readme
    for prefixed in (".venv/bin/snakemake", ".venv/bin/python -m dgkd_core", ".venv/bin/dgkd",
                     ".venv/bin/tensorboard"):
        assert prefixed not in readme, f"{prefixed}: write the plain command"
    makefile = (REPO / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z-]*):", makefile, flags=re.M)
    assert "test-fast" in targets and "clean-results" in targets
    for target in targets:
        assert f"make {target}" in readme, f"make {target} is not in the README"
    assert "`dgkd`" in readme  # the console script
