"""The command line: train --help's run-config keys, option help, --log-file, the epoch ETA."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest

from dgkd_core.cli import build_parser, main
from dgkd_core.config import RUN_CONFIG_SCHEMA
from dgkd_core.data import prepare_dataset
from dgkd_core.training.history import eta_seconds, format_eta
from dgkd_core.training.trainer import train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synthetic.pt"
    prepare_dataset("synthetic", path, seed=0, synthetic_train=256, synthetic_test=128)
    return path


@pytest.fixture(autouse=True)
def restore_log_handlers():
    """main() points the package's logger at stderr or --log-file: put it back afterwards."""
    logger = logging.getLogger("dgkd_core")
    saved = logger.handlers[:]
    yield
    for handler in logger.handlers:
        if handler not in saved:
            handler.close()
    logger.handlers[:] = saved


def leaf_keys(schema: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """The schema's settable keys, dotted, walked here independently of the CLI's own walk."""
    out = []
    for key, sub in schema["properties"].items():
        if sub.get("type") == "object" and "properties" in sub:
            out += leaf_keys(sub, f"{prefix}{key}.")
        else:
            out.append((prefix + key, sub))
    return out


def help_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return capsys.readouterr().out


def test_train_help_lists_every_run_config_key(capsys):
    text = help_of(["train", "--help"], capsys)
    lines = {line.split()[0]: line for line in text.splitlines()
             if line.startswith("  ") and not line.startswith("   ")}
    keys = leaf_keys(RUN_CONFIG_SCHEMA)
    assert len(keys) > 25
    for key, leaf in keys:
        assert key in lines, f"{key} is missing from train --help"
        default = leaf.get("default")
        shown = ("null" if default is None else str(default).lower()
                 if isinstance(default, bool) else str(default).replace("'", ""))
        assert lines[key].split(None, 1)[1].startswith(shown + "  "), key
    assert "one of step, constant, cosine" in lines["schedule.name"]
    assert "number in [0, 1]" in lines["loss.lam"]
    assert "number > 0" in lines["optimizer.lr"]
    assert "integer >= 1" in lines["epochs"]
    assert "number in (0, 1] or null" in lines["loss.keep_prob"]
    assert "one of auto, true, false" in lines["fast.cuda_graph"]
    assert re.search(r"^  python -m dgkd_core train --set \S+", text, re.M), "no example command"


def test_version(capsys):
    from dgkd_core import __version__

    assert help_of(["--version"], capsys).strip() == f"dgkd_core {__version__}"


def test_train_help_lists_the_model_names(capsys):
    from dgkd_core.method.models import available_models

    text = " ".join(help_of(["train", "--help"], capsys).split())
    assert "models: " + ", ".join(available_models()) in text


@pytest.mark.parametrize("run, needle", [
    ({"model": "plane2", "epoch": 3}, "unknown run-config key 'epoch' (did you mean 'epochs'?)"),
    ({"model": "plane2", "loss": {"temprature": 3}}, "(did you mean 'temperature'?)"),
    ({"model": "plane2", "top1_last": 50.0}, "a target written after --configfile?"),
])
def test_unknown_keys_get_a_guess(run, needle):
    from dgkd_core.config import resolve_run_config
    from dgkd_core.schema import ConfigError

    with pytest.raises(ConfigError) as raised:
        resolve_run_config(run)
    assert needle in str(raised.value) and len(str(raised.value).splitlines()) == 1


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", ["evaluate", "train", "prepare-data", "bench", "reproduction",
                                  "import"])
def test_every_option_has_help(name):
    parser = subcommand_parsers()[name]
    missing = [a.option_strings[0] for a in parser._actions
               if a.option_strings and not (a.help and a.help != argparse.SUPPRESS)]
    assert not missing, f"{name} options without help: {missing}"


@pytest.mark.parametrize("argv", [
    ["--log-file", "LOG", "train"], ["train", "--log-file", "LOG"],
    ["--log-file", "other", "train", "--log-file", "LOG"],
    ["--log-file", "LOG", "evaluate", "--checkpoint", "c", "--data", "d"],
    ["evaluate", "--checkpoint", "c", "--data", "d", "--log-file", "LOG"],
])
def test_log_file_before_and_after_the_subcommand_parses(argv):
    assert build_parser().parse_args(argv).log_file == "LOG"


def test_log_file_and_debug_default_when_given_nowhere():
    args = build_parser().parse_args(["train"])
    assert args.log_file is None and args.debug is False
    assert build_parser().parse_args(["train", "--debug"]).debug is True
    assert build_parser().parse_args(["--debug", "train"]).debug is True


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_file_receives_the_epoch_lines(tiny_data, tmp_path, where):
    log = tmp_path / "train.log"
    train_args = ["train", "--set", f"data={tiny_data}", "--set", f"out_dir={tmp_path / 'out'}",
                  "--set", "model=plane2", "--set", "epochs=1", "--set", "batch_size=64"]
    argv = (["--log-file", str(log), *train_args] if where == "before"
            else [*train_args, "--log-file", str(log)])
    assert main(argv) == 0
    assert "epoch   1/1  lr" in log.read_text()


@pytest.mark.parametrize("seconds, text", [
    (0, "ETA 0s"), (42, "ETA 42s"), (41.2, "ETA 42s"), (192, "ETA 3m12s"), (60, "ETA 1m00s"),
    (7500, "ETA 2h05m"),
])
def test_format_eta(seconds, text):
    assert format_eta(seconds) == text


def test_eta_is_epochs_left_times_the_mean_epoch():
    assert eta_seconds(3, [10.0, 20.0]) == 45.0
    assert eta_seconds(0, [10.0]) == 0.0
    assert eta_seconds(5, []) == 0.0


def test_epoch_line_ends_with_an_eta(tiny_data, tmp_path, caplog):
    cfg = {"model": "plane2", "seed": 1, "epochs": 3, "batch_size": 64, "eval_batch_size": 128,
           "schedule": {"name": "constant"}, "optimizer": {"lr": 0.05}}
    with caplog.at_level(logging.INFO, logger="dgkd_core"):
        train(cfg, tiny_data, tmp_path, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    pattern = (r"^epoch +\d+/3  lr \S+  ce \S+  total \S+  train top1 \S+  test top1 \S+ "
               r"top5 \S+  \d+ img/s  [\d.]+ s  ETA (\d+m)?\d+s$")
    for line in lines:
        assert re.match(pattern, line), line
    assert lines[-1].endswith("ETA 0s")
