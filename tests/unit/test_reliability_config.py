"""Issue 25, items 1 and 11: a config that expands (YAML aliases), nests or counts beyond a sane
size is refused in one line, within a second, before it is validated."""

from __future__ import annotations

import time

import pytest
import yaml

from dgkd_core import cli, io
from dgkd_core.config import ConfigError, parse_overrides, resolve_run_config
from dgkd_core.experiment.plan import Plan


def alias_bomb(key: str, levels: int = 9, width: int = 9) -> str:
    """`key: ...` whose value, expanded, holds width**levels zeros (9**9: 387 million)."""
    lines = [f"a0: &a0 [{', '.join(['0'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + f"\n{key}: *a{levels - 1}\n"


def shared_bomb(levels: int, width: int = 10):
    """What a YAML loader builds from an alias bomb: one list shared `width` times per level."""
    node: list = [0] * width
    for _ in range(levels):
        node = [node] * width
    return node


def one_line(err) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 400, text[:500]
    return text


@pytest.mark.parametrize("key", ["resize", "keep_probs"])
def test_run_file_alias_bomb_refused_in_a_second(tmp_path, key):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb(key))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        cli.read_run_file(str(path))
    assert time.perf_counter() - start < 1.0
    text = one_line(err.value)
    assert str(path) in text and "alias" in text


def test_load_yaml_text_allows_a_few_aliases():
    text = "a: &x [1, 2]\nb: *x\nc: *x\n"
    assert io.load_yaml_text(text, "small.yaml") == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}


def test_set_value_alias_bomb_refused():
    value = "[" + ", ".join(["&a [0, 0]"] + ["*a"] * 200) + "]"
    with pytest.raises(ConfigError) as err:
        parse_overrides([f"normalize.mean={value}"])
    assert "alias" in one_line(err.value)


def test_yaml_nested_5000_deep_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as err:
        cli.read_run_file(str(path))
    text = one_line(err.value)
    assert str(path) in text and "deep" in text


@pytest.mark.parametrize("key", ["seeds", "methods"])
def test_workflow_config_that_expands_is_refused_in_a_second(key):
    config = yaml.safe_load(open("config/config.yaml", encoding="utf-8"))
    config[key] = shared_bomb(levels=6)  # 10**7 values once expanded
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        Plan(config)
    assert time.perf_counter() - start < 1.0
    text = one_line(err.value)
    assert "expands" in text and key in text


def test_run_config_that_expands_is_refused_in_a_second():
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        resolve_run_config({"model": "plane2", "normalize": {"mean": shared_bomb(6),
                                                             "std": [1, 1, 1]}})
    assert time.perf_counter() - start < 1.0
    assert "expands" in one_line(err.value)


def test_run_config_nested_5000_deep_is_one_line():
    node: dict = {}
    deep = node
    for _ in range(5000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ConfigError) as err:
        resolve_run_config({"model": "plane2", "loss": deep})
    assert "deep" in one_line(err.value)


def test_seed_beyond_int64_is_refused():
    with pytest.raises(ConfigError) as err:
        resolve_run_config({"model": "plane2", "seed": 2 ** 70})
    assert "seed" in one_line(err.value)
    config = yaml.safe_load(open("config/config.yaml", encoding="utf-8"))
    config["seeds"] = [0, 2 ** 63]
    with pytest.raises(ConfigError) as err:
        Plan(config)
    assert "seeds" in one_line(err.value)


def test_log_file_in_a_missing_folder_is_one_line(tmp_path, capsys):
    log_file = tmp_path / "missing" / "train.log"
    status = cli.main(["train", "--log-file", str(log_file), "--set", "model=plane2"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err, err
    assert str(log_file) in err and "No such file or directory" in err


def test_workflow_refuses_an_alias_bomb_configfile_before_any_job(tmp_path):
    """Snakemake loads --configfile itself; rules/common.smk's Plan refuses what it expands to."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    config = re.sub(r"(?m)^seeds:.*$", "", (repo / "config" / "test_tiny.yaml").read_text())
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb("seeds") + config)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-s", str(repo / "Snakefile"), "--configfile",
         str(path), "--cores", "1", "--directory", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Invalid config: config key 'seeds' expands to more than" in output


def test_list_items_as_text_from_snakemakes_config_get_a_hint():
    """Snakemake's `--config seeds=[3]` reads list items as text: ['3']."""
    config = yaml.safe_load(open("config/config.yaml", encoding="utf-8"))
    config["seeds"] = ["3"]
    with pytest.raises(ConfigError) as err:
        Plan(config)
    text = one_line(err.value)
    assert "'seeds.0' is '3'" in text and "as text" in text and "--configfile" in text
